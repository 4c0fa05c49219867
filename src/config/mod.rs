//! Configuration: one TOML file loaded with figment.
//!
//! The defaults live in one documented file, `src/config/defaults.toml`,
//! compiled in. [`Config::load`] merges it, then the user's file, then
//! `HOOKD_` environment variables (nested keys joined with `__`), extracts,
//! and validates. Every problem names its key.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize, Serializer};

/// The compiled-in defaults: every key hookd reads, documented.
pub const DEFAULTS: &str = include_str!("defaults.toml");

/// Prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "HOOKD_";

/// `HOOKD_` variables that are not configuration keys: the CLI's own
/// (`HOOKD_CONFIG`, `HOOKD_URL`, `HOOKD_API_KEY`) and the log filter.
const ENV_NOT_CONFIG: &[&str] = &["config", "url", "api_key", "log"];

pub use crate::model::{RateLimit, Secret, SubscriptionName, TenantId, STORED_ID_PREFIX};

pub mod bounds;
use bounds::{above, Bounds};
mod postgres;
pub use postgres::PostgresTls;

/// A configuration problem, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be parsed, a key is unknown, or a value has the
    /// wrong type; figment's message names the key and its source.
    #[error(transparent)]
    Figment(#[from] Box<figment::Error>),
    /// A value parsed but is not acceptable.
    #[error("invalid `{key}`: {problem}")]
    Invalid { key: String, problem: String },
    /// The configuration file given does not exist.
    #[error("config file {path} not found: pass an existing TOML file with --config")]
    Missing { path: PathBuf },
}

/// Serializes a URL (an endpoint's, or Redis's kept as a [`Secret`]) as
/// [`crate::model::redact_url`] shows it.
fn serialize_redacted_url<U: AsUrl, S: serde::Serializer>(url: &U, s: S) -> Result<S::Ok, S::Error> {
    match url.as_url() {
        Some(url) => s.serialize_str(&crate::model::redact_url(url)),
        None => s.serialize_none(),
    }
}

/// The URL text of a field [`serialize_redacted_url`] shows.
trait AsUrl {
    fn as_url(&self) -> Option<&str>;
}

impl AsUrl for String {
    fn as_url(&self) -> Option<&str> {
        Some(self)
    }
}

impl AsUrl for Option<Secret> {
    fn as_url(&self) -> Option<&str> {
        self.as_ref().map(Secret::expose)
    }
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Error {
    Error::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

/// hookd's whole configuration.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The HTTP API.
    pub server: ServerConfig,
    /// The queue backend: Redis or the embedded store.
    pub queue: QueueConfig,
    /// How events are accepted.
    pub ingest: IngestConfig,
    /// How deliveries are attempted and retried.
    pub delivery: DeliveryConfig,
    /// The WebAssembly plugin host.
    pub plugins: PluginsConfig,
    /// Email alerts about subscriptions and dead deliveries.
    pub notify: NotifyConfig,
    /// The delivery log: what is kept of every attempt, and for how long.
    pub history: HistoryConfig,
    /// The web console and tenant portal.
    pub console: ConsoleConfig,
    /// The catalogue of tenants and subscriptions made through the API.
    pub catalog: CatalogConfig,
    /// Metrics.
    pub telemetry: TelemetryConfig,
    /// Who receives which events.
    #[serde(default)]
    pub subscriptions: Vec<SubscriptionConfig>,
    /// Tenants declared by the operator (more are made through the API).
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    /// What each plan allows its tenants, by plan name.
    #[serde(default)]
    pub plans: BTreeMap<String, PlanConfig>,
    /// The event catalogue: the types tenants may subscribe to (more are
    /// added through the API).
    #[serde(default)]
    pub event_types: Vec<EventTypeConfig>,
    /// The file this was loaded from, watched for reloads (not a key).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// `[server]`: the HTTP API.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Bearer keys accepted under `/v1`; empty means no authentication.
    pub api_keys: Vec<Secret>,
    /// Serve an API without keys on an address beyond loopback: refused
    /// unless this says so.
    pub allow_unauthenticated: bool,
    /// Host names (or IP addresses) the API and the console answer to
    /// besides loopback ones (`localhost`, `*.localhost`, `127.0.0.0/8`,
    /// `[::1]`), compared with a request's `Host` (or HTTP/2's
    /// `:authority`) without its port; others get a 421
    /// `host_not_allowed`. This keeps another site's page, whose DNS name
    /// was pointed at this machine (DNS rebinding), from using an API
    /// without keys. When names are listed, every request must match one
    /// or be loopback, keys or not. When the list is empty, an API without
    /// `api_keys` answers loopback names only, and one with keys does not
    /// look at the host (behind a proxy, keys protect it). `/healthz` is
    /// never checked: load balancers probe it under any name, and it says
    /// nothing but that the process is up.
    pub allowed_hosts: Vec<String>,
    /// While `api_keys` is set, `GET /metrics` needs an admin key unless
    /// this is true. Without `api_keys` the metrics are readable by
    /// anyone who reaches the listener, as the rest of the API is.
    pub metrics_public: bool,
    /// Deprecated: `/metrics` is behind an admin key by default now while
    /// `api_keys` is set (see `metrics_public`). Still honoured: true asks
    /// for a bearer key even without `api_keys`, and cannot be combined
    /// with `metrics_public = true`.
    pub metrics_require_key: bool,
    /// Most connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// How long a client may take to send a request's head (and an idle
    /// keep-alive connection to start its next request).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long an HTTP/2 connection may sit with no request in progress
    /// before it is closed (gracefully: GOAWAY), freeing its slot of
    /// `max_connections`. Its keep-alive pings do not count as use.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most requests one HTTP/2 connection may have in progress at once
    /// (its `SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub http2_max_streams: u32,
    /// How long one request may take, its body read included; beyond it
    /// the answer is a 408.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long shutdown waits for requests in progress before closing
    /// their connections.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// PEM certificate chain: set with `tls_key`, the API (and the
    /// console) is served over HTTPS only.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

/// `[queue]`: where deliveries wait.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Redis URL; absent selects the embedded store. Shown with its
    /// userinfo and parameters redacted ([`crate::model::redact_url`]).
    #[serde(serialize_with = "serialize_redacted_url")]
    pub redis_url: Option<Secret>,
    /// Treat `redis_url` as a seed node of a Redis Cluster.
    pub cluster: bool,
    /// Directory of the embedded store.
    pub data_dir: PathBuf,
    /// Prefix of every Redis key.
    pub key_prefix: String,
    /// Number of queue shards (hash tags).
    pub shards: u16,
    /// How long a claim stays invisible to other workers.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Redis connections per process.
    pub pool_size: usize,
    /// How long connecting to Redis may take.
    #[serde(with = "humantime_serde")]
    pub redis_connect_timeout: Duration,
    /// How long one Redis command or script may take to answer.
    #[serde(with = "humantime_serde")]
    pub redis_response_timeout: Duration,
    /// Certificate authorities (PEM) trusted for `rediss://`; absent: the
    /// system's roots.
    pub redis_ca_file: Option<PathBuf>,
    /// Replicas that must acknowledge an enqueue (Redis `WAIT`) before it
    /// is answered as accepted; 0: none (asynchronous replication).
    pub redis_wait_replicas: u32,
    /// How long an enqueue waits for those replicas before it fails.
    #[serde(with = "humantime_serde")]
    pub redis_wait_timeout: Duration,
    /// Longest dispatcher sleep when nothing is due.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long a dead delivery is kept for replay before it is forgotten
    /// (recorded as `expired` in the delivery log); zero: kept forever.
    /// Parked deliveries are kept however old.
    #[serde(with = "humantime_serde")]
    pub dead_retention: Duration,
}

/// `[ingest]`: how events are accepted.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Largest accepted event body in bytes.
    pub max_body_bytes: usize,
    /// Largest number of events in one batch request.
    pub max_batch: usize,
    /// Window within which a repeated event id is a duplicate.
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// Read the Redis stream `<key_prefix>:events`.
    pub stream: bool,
    /// Consumer group used on the stream.
    pub stream_group: String,
    /// Refuse events whose `data` fails their type's JSON Schema.
    pub validate_schemas: bool,
    /// Deepest nesting of objects and arrays accepted in `data` (`{}` is 1).
    pub max_depth: usize,
    /// Deliveries due or scheduled beyond which producers' events are
    /// refused (503 with `Retry-After`) and the stream is not read; 0:
    /// unbounded.
    pub max_queue_depth: u64,
}

/// `[delivery]`: attempts, retries and the endpoint policy.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Run the dispatcher in this process (false: ingest only).
    pub dispatch: bool,
    /// Timeout of one attempt.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// The most retries any subscription may set (`max_retries`), this
    /// default included.
    pub max_retries_limit: u32,
    /// The longest attempt timeout any subscription may set (`timeout`),
    /// this default included.
    #[serde(with = "humantime_serde")]
    pub timeout_max: Duration,
    /// Delay before the first retry.
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// Growth factor of the delay from one retry to the next.
    pub backoff_multiplier: f64,
    /// Upper bound of a retry delay.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Upper bound of a delay asked for with `Retry-After` (429, 503),
    /// honoured beyond `backoff_max` up to this.
    #[serde(with = "humantime_serde")]
    pub retry_after_max: Duration,
    /// Allow `http://` endpoint URLs.
    pub allow_http: bool,
    /// Allow endpoints on loopback, private and other non-public addresses.
    pub allow_private_networks: bool,
    /// Deliveries in flight at once in this process; also the most any
    /// subscription may set as its `max_in_flight`.
    pub max_in_flight: usize,
    /// Default cap on deliveries in flight to one subscription.
    pub max_in_flight_per_subscription: usize,
    /// Consecutive failed attempts that disable a subscription; 0: never.
    pub disable_after_failures: u64,
    /// Failing this long without a success disables a subscription; 0: never.
    #[serde(with = "humantime_serde")]
    pub disable_after: Duration,
    /// Extra CA certificates (PEM) trusted beside the system roots.
    pub ca_file: Option<PathBuf>,
    /// Bytes of each response body read (the rest is dropped unread); the
    /// delivery log keeps at most `history.response_body_limit` of them.
    pub response_body_limit: usize,
}

/// `[plugins]`: how WebAssembly plugins run (see [`crate::plugin`]).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// How long one plugin call may take in wall time, once it has an
    /// instance slot; the default of `subscriptions.plugin.deadline`.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    /// How long a call may wait for an instance slot before it gives up
    /// and its delivery is retried later.
    #[serde(with = "humantime_serde")]
    pub queue_timeout: Duration,
    /// Memory cap of one plugin instance, all its memories together: the
    /// default of `subscriptions.plugin.memory_limit`, and its ceiling.
    pub memory_limit: ByteSize,
    /// Directory of compiled plugins, reused across restarts. hookd loads
    /// native code from it: not used unless hookd's user owns it and
    /// group and others may not write it.
    pub cache_dir: PathBuf,
    /// Start a fresh instance for every event instead of reusing warm ones;
    /// the default of `subscriptions.plugin.fresh_instance`.
    pub fresh_instance: bool,
    /// Log messages per second each plugin may write; the excess is dropped.
    pub log_rate: u32,
    /// Idle warm instances kept per plugin, ready for the next event.
    pub warm_instances: usize,
    /// The most memory idle warm instances may hold, over all plugins: an
    /// instance that would push the total past it is dropped after its call
    /// instead of kept.
    pub warm_memory: ByteSize,
    /// Plugin instances that may exist at once in this process, over all
    /// plugins; calls beyond what is left after the idle ones wait.
    pub max_instances: u32,
    /// Largest body a plugin may return; a larger one fails the delivery.
    pub max_body_bytes: ByteSize,
    /// Plugins subscriptions made through the API may use, by name: the API
    /// never takes a file path.
    #[serde(default)]
    pub registry: BTreeMap<String, RegisteredPlugin>,
}

/// `[plugins.registry.NAME]`: a plugin the operator offers to
/// subscriptions made through the API, which name it and give its config.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegisteredPlugin {
    /// The component (`.wasm`).
    pub path: PathBuf,
    /// What tenants read about it.
    #[serde(default)]
    pub description: String,
    /// Override of `plugins.deadline`.
    #[serde(default, with = "humantime_serde")]
    pub deadline: Option<Duration>,
    /// Override of `plugins.memory_limit` (which it may not exceed).
    #[serde(default)]
    pub memory_limit: Option<ByteSize>,
    /// Override of `plugins.fresh_instance`.
    #[serde(default)]
    pub fresh_instance: Option<bool>,
}

impl RegisteredPlugin {
    /// The plugin table of a subscription using it with `config`.
    pub fn with_config(&self, config: BTreeMap<String, String>) -> PluginConfig {
        PluginConfig {
            path: self.path.clone(),
            config,
            deadline: self.deadline,
            memory_limit: self.memory_limit,
            fresh_instance: self.fresh_instance,
        }
    }
}

/// A size in bytes, written as a number of bytes (`65536`) or with a unit
/// (`"64KiB"`, `"64MiB"`, `"1GiB"`; `KB`, `MB`, `GB` are powers of 1000).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `"64MiB"`, `"512 KiB"`, `"1048576"` or `"1048576B"`.
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let number: u64 = digits
            .parse()
            .map_err(|_| format!("`{text}` is not a size; write bytes (65536) or a size with a unit (\"64MiB\")"))?;
        let multiplier: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => {
                return Err(format!(
                    "`{other}` in `{text}` is not a unit; use B, KiB, MiB, GiB, KB, MB or GB"
                ))
            }
        };
        number
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| format!("`{text}` is too large"))
    }

    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size: a number of bytes or a string such as \"64MiB\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `[subscriptions.plugin]`: a WebAssembly plugin that may drop or reshape
/// each delivery before it is signed (see [`crate::plugin`]).
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The plugin: a WebAssembly component (`.wasm`) of the
    /// `hookd:plugin/transformer` world.
    pub path: PathBuf,
    /// Settings handed to the plugin on every call, as text. Numbers and
    /// booleans are accepted and passed as their text (`10`, `true`).
    /// They may carry credentials: their values are shown as `[redacted]`.
    #[serde(
        default,
        deserialize_with = "string_table",
        serialize_with = "crate::model::serialize_redacted_values"
    )]
    pub config: BTreeMap<String, String>,
    /// Override of `plugins.deadline`.
    #[serde(default, with = "humantime_serde")]
    pub deadline: Option<Duration>,
    /// Override of `plugins.memory_limit` (which it may not exceed).
    #[serde(default)]
    pub memory_limit: Option<ByteSize>,
    /// Override of `plugins.fresh_instance`.
    #[serde(default)]
    pub fresh_instance: Option<bool>,
}

impl fmt::Debug for PluginConfig {
    /// The settings' values hidden, as in its serialized form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginConfig")
            .field("path", &self.path)
            .field("config", &crate::model::RedactedValues(&self.config))
            .field("deadline", &self.deadline)
            .field("memory_limit", &self.memory_limit)
            .field("fresh_instance", &self.fresh_instance)
            .finish()
    }
}

/// Largest `ingest.max_depth` accepted: the envelope adds a level, and many
/// receivers' JSON parsers (serde_json's among them) stop at 128.
pub const MAX_DEPTH_LIMIT: usize = 100;

/// Longest plugin deadline accepted: a plugin runs inside a delivery.
pub const MAX_PLUGIN_DEADLINE: Duration = Duration::from_secs(10);

/// Smallest plugin memory cap accepted: a Rust plugin needs about 1 MiB.
pub const MIN_PLUGIN_MEMORY: ByteSize = ByteSize(2 << 20);

/// Deserializes a table whose values are strings, numbers or booleans,
/// keeping each value as text.
fn string_table<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Int(i64),
        Float(f64),
        Bool(bool),
    }
    let table = BTreeMap::<String, Scalar>::deserialize(d)?;
    Ok(table
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Scalar::Text(s) => s,
                Scalar::Int(n) => n.to_string(),
                Scalar::Float(x) => x.to_string(),
                Scalar::Bool(b) => b.to_string(),
            };
            (k, v)
        })
        .collect())
}

/// `[notify]`: email alerts, sent in digests over SMTP.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// SMTP server host; absent turns email off.
    pub smtp_host: Option<String>,
    /// SMTP server port.
    pub smtp_port: u16,
    /// How the SMTP connection is secured.
    pub smtp_tls: SmtpTls,
    /// SMTP user name, if the server wants authentication.
    pub smtp_username: Option<String>,
    /// SMTP password; never logged, never in a mail.
    pub smtp_password: Option<Secret>,
    /// Sender mailbox (`address` or `Name <address>`); required with `smtp_host`.
    pub from: Option<String>,
    /// Recipients of every notification not routed by a subscription's `notify_to`.
    pub to: Vec<String>,
    /// Notifications within this window of the first go in one mail.
    #[serde(with = "humantime_serde")]
    pub digest_window: Duration,
    /// Start of every subject line.
    pub subject_prefix: String,
}

/// How hookd secures its SMTP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS; a server without it is refused.
    Starttls,
    /// TLS from the first byte (SMTPS, usually port 465).
    Tls,
    /// No encryption: only for a relay on loopback or a trusted network.
    None,
}

/// Reads one mailbox (`address` or `Name <address>`): the one parser of
/// `notify.from`, `notify.to` and `notify_to`, for the config's checks and
/// the notifier alike. The problem says what to write instead.
pub fn parse_mailbox(text: &str) -> Result<lettre::message::Mailbox, String> {
    text.parse::<lettre::message::Mailbox>().map_err(|e| {
        format!("`{text}` is not an email address ({e}); use `name@example.com` or `Name <name@example.com>`")
    })
}

/// Checks one mailbox ([`parse_mailbox`]), naming `key`.
fn check_mailbox(key: &str, text: &str) -> Result<(), Error> {
    parse_mailbox(text).map(|_| ()).map_err(|p| invalid(key, p))
}

/// `[history]`: the delivery log and its retention.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    /// Deliveries created longer ago than this are trimmed, with their
    /// attempts; event records (what a replay sends) too.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Most deliveries kept overall, and most event records; the oldest
    /// beyond it are trimmed.
    pub max_count: usize,
    /// Bytes of each response body kept in an attempt record (the store
    /// cuts longer ones).
    pub response_body_limit: usize,
    /// PostgreSQL URL of the delivery log (`postgres://user:pass@host/db`);
    /// unset, the log lives beside the queue (Redis, or `history.redb`).
    /// Shown with its userinfo and parameters redacted.
    #[serde(default, serialize_with = "serialize_redacted_url")]
    pub postgres_url: Option<Secret>,
    /// TLS to PostgreSQL: `disable`, `require` (encrypted, the
    /// certificate not checked) or `verify-full` (chain and host name
    /// checked). Unset: the URL's `sslmode` (`disable` or `require`) if it
    /// has one, else `disable` for a loopback host or a Unix socket and
    /// `verify-full` for any other ([`HistoryConfig::postgres_tls_in_force`]).
    #[serde(default)]
    pub postgres_tls: Option<PostgresTls>,
    /// CA certificates (PEM) trusted by `verify-full`, instead of the
    /// system's roots; read at start-up.
    #[serde(default)]
    pub postgres_ca_file: Option<PathBuf>,
    /// Most connections to PostgreSQL this process holds.
    pub postgres_pool_size: usize,
    /// Bytes of log entries held in memory while the log store cannot
    /// take them; beyond, they spool to `history.spool` under
    /// `queue.data_dir`.
    pub spool_memory: ByteSize,
    /// Most bytes of log entries spooled on disk; beyond, entries are
    /// dropped, counted in `hookd_history_dropped_total` and logged.
    pub spool_disk: ByteSize,
}

impl HistoryConfig {
    /// The TLS mode in force for `postgres_url`, and why it is that one
    /// (`history.postgres_tls`, the URL's `sslmode`, or the default by
    /// host); `None` without a URL. The problem names the key to change.
    pub fn postgres_tls_in_force(&self) -> Result<Option<(PostgresTls, &'static str)>, Error> {
        self.postgres_url
            .as_ref()
            .map(|url| postgres::in_force(url.expose(), self.postgres_tls))
            .transpose()
    }
}

/// `[console]`: the web console and tenant portal at `/console`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Whether `/console` is served at all.
    pub enabled: bool,
    /// How long a console session lasts after signing in.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// How long a one-time sign-in link (a tenant's portal link) may wait
    /// before it is opened.
    #[serde(with = "humantime_serde")]
    pub link_ttl: Duration,
    /// The address browsers reach hookd at (`https://hooks.example.com`),
    /// for the links hookd hands out; unset, the request's `Host`. An
    /// `https://` address also marks the session cookie `Secure`.
    #[serde(default)]
    pub public_url: Option<String>,
}

/// `[catalog]`: the catalogue of tenants and subscriptions made through
/// the API.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    /// How long the tombstone of a deleted subscription is kept (so every
    /// process cancels its deliveries) before it is purged; its secrets
    /// are erased at the delete itself. At least 1h.
    #[serde(with = "humantime_serde")]
    pub tombstone_retention: Duration,
    /// How long a process may go without reading the catalogue store
    /// before it refuses the keys made through the API (which it can no
    /// longer tell revoked): it fails closed. The config's keys still work.
    /// 1s to 1h.
    #[serde(with = "humantime_serde")]
    pub max_staleness: Duration,
}

/// `[telemetry]`: metrics.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// How many subscriptions get series of their own in `/metrics`; later
    /// ones share `subscription="other"`, so tenants making subscriptions
    /// cannot grow the metrics without bound. 1 to 1,000,000.
    pub max_series: usize,
}

/// One `[[subscriptions]]` entry.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionConfig {
    /// Unique name; appears in logs, metrics and the admin API.
    pub name: SubscriptionName,
    /// Endpoint URL receiving the POSTs. Shown with its userinfo and
    /// parameters redacted ([`crate::model::redact_url`]).
    #[serde(serialize_with = "serialize_redacted_url")]
    pub url: String,
    /// Event type patterns: exact (`link.clicked`), prefix (`coupon.*`) or `*`.
    pub events: Vec<String>,
    /// Signing secrets, each signing every delivery (so keys can be
    /// rotated): `whsec_…` (HMAC-SHA256, `v1` signatures) or `whsk_…`
    /// (Ed25519, `v1a`; receivers verify with the `whpk_…` public key that
    /// `hookd config check` prints).
    pub secrets: Vec<Secret>,
    /// Extra headers sent with every request. They may carry credentials:
    /// their values are shown as `[redacted]`.
    #[serde(default, serialize_with = "crate::model::serialize_redacted_values")]
    pub headers: BTreeMap<String, String>,
    /// Whether deliveries are sent; false sends nothing and parks its
    /// deliveries (kept, not dropped) until it is enabled.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Override of `delivery.timeout`.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Override of `delivery.max_retries`.
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// Override of `delivery.max_in_flight_per_subscription`.
    #[serde(default)]
    pub max_in_flight: Option<usize>,
    /// Most requests per second sent to the endpoint, with a burst
    /// allowance: `rate_limit = { per_second = 10, burst = 20 }`. None: no
    /// limit beyond `max_in_flight`.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// A plugin run on each delivery's first attempt, before signing.
    #[serde(default)]
    pub plugin: Option<PluginConfig>,
    /// Recipients of notifications about this subscription, instead of `notify.to`.
    #[serde(default)]
    pub notify_to: Option<Vec<String>>,
    /// The tenants whose events this subscription receives; absent: every
    /// event, of any tenant or of none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants: Option<Vec<TenantId>>,
    /// The tenant owning a subscription made through the API (not a key:
    /// set by the catalogue; a TOML subscription is the operator's).
    #[serde(skip)]
    pub owner: Option<TenantId>,
    /// Which endpoints it may reach: its tenant's plan's policy, set by the
    /// catalogue; `None` (a TOML subscription) follows `[delivery]`.
    #[serde(skip)]
    pub network: Option<crate::deliver::NetworkPolicy>,
}

impl fmt::Debug for SubscriptionConfig {
    /// What may hold a credential hidden: secrets, header values, plugin
    /// settings, and the URL's userinfo, parameters and tokens.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionConfig")
            .field("name", &self.name)
            .field("url", &crate::model::RedactedUrl(&self.url))
            .field("events", &self.events)
            .field("secrets", &self.secrets)
            .field("headers", &crate::model::RedactedValues(&self.headers))
            .field("enabled", &self.enabled)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("max_in_flight", &self.max_in_flight)
            .field("rate_limit", &self.rate_limit)
            .field("plugin", &self.plugin)
            .field("notify_to", &self.notify_to)
            .field("tenants", &self.tenants)
            .field("owner", &self.owner)
            .field("network", &self.network)
            .finish()
    }
}

impl EventTypeConfig {
    /// Checks the type as the config file and the API take it: a dotted
    /// name outside `hookd.`, a schema that compiles, an example (an
    /// object) that the schema accepts. Problems name the field.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        crate::model::check_event_type(&self.name).map_err(|p| ("name", p))?;
        if crate::model::is_internal(&self.name) {
            return Err(("name", format!("`{}`: types under `hookd.` are hookd's own", self.name)));
        }
        if self.description.len() > 2000 {
            return Err(("description", "must be at most 2000 characters".into()));
        }
        if let Some(example) = &self.example {
            if !example.is_object() {
                return Err(("example", "must be a JSON object (an event's `data`)".into()));
            }
        }
        if let Some(schema) = &self.schema {
            let validator = jsonschema::validator_for(schema)
                .map_err(|e| ("schema", format!("is not a valid JSON Schema: {e}")))?;
            if let Some(example) = &self.example {
                if let Some(e) = validator.iter_errors(example).next() {
                    return Err((
                        "example",
                        format!("does not match the schema at `{}`: {e}", e.instance_path()),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `[[tenants]]`: a tenant declared by the operator.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Its id (`acme`): 1 to 63 of `a-z 0-9 _ -`.
    pub id: TenantId,
    /// Its display name.
    pub name: String,
    /// Its plan, a key of `[plans]`; absent: no limits beyond hookd's own.
    #[serde(default)]
    pub plan: Option<String>,
    /// Free-form data kept with it.
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// The plan of every tenant that names none, and where every plan's
/// absent limits come from: `[plans.default]`, defined in the defaults.
pub const DEFAULT_PLAN: &str = "default";

/// `[plans.NAME]`: what a plan allows each of its tenants. A limit it
/// leaves out is `[plans.default]`'s; one neither sets does not limit.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    /// Most subscriptions a tenant may have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_subscriptions: Option<u32>,
    /// Highest `rate_limit.per_second` a tenant may give a subscription.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rate_limit: Option<f64>,
    /// Events per second a tenant may send (beyond: 429 with Retry-After),
    /// one bucket shared by every process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_per_second: Option<f64>,
    /// Most deliveries of a tenant's subscriptions that may be waiting,
    /// retrying or parked at once ([`crate::queue::Queue::pending_of`]):
    /// beyond, its ingest is answered 429 `tenant_queue_full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending: Option<u64>,
    /// Events a tenant may send at once after a quiet spell; default:
    /// `events_per_second` rounded up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Highest `max_in_flight` a tenant may give a subscription (at most
    /// `delivery.max_in_flight`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<usize>,
    /// Highest `max_retries` a tenant may give a subscription (at most
    /// `delivery.max_retries_limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Longest `timeout` a tenant may give a subscription (at most
    /// `delivery.timeout_max`).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    pub max_timeout: Option<Duration>,
    /// Most custom headers on one of a tenant's subscriptions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_headers: Option<usize>,
    /// Most event patterns on one of a tenant's subscriptions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_events: Option<usize>,
    /// Highest `rate_limit.burst` a tenant may give a subscription.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_burst: Option<u32>,
    /// The plan's tenants may use `http://` endpoint URLs (off unless set:
    /// `delivery.allow_http` is the operator's alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_http: Option<bool>,
    /// The plan's tenants may reach loopback, private and other non-public
    /// addresses (off unless set: `delivery.allow_private_networks` is the
    /// operator's alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_private_networks: Option<bool>,
}

impl PlanConfig {
    /// Checks the plan; `key` is `plans.<name>`. A plan lowers the
    /// process's bounds, never raises them.
    fn validate(&self, key: &str, delivery: &DeliveryConfig) -> Result<(), Error> {
        let b = Bounds::of(delivery);
        if self
            .max_rate_limit
            .is_some_and(|r| !(r.is_finite() && r > 0.0 && r <= b.per_second.value))
        {
            return Err(invalid(
                format!("{key}.max_rate_limit"),
                format!("must be a number above 0, at most {}", b.per_second.value),
            ));
        }
        if self
            .events_per_second
            .is_some_and(|r| !(r.is_finite() && r > 0.0 && r <= bounds::MAX_RATE))
        {
            return Err(invalid(
                format!("{key}.events_per_second"),
                format!("must be a number above 0, at most {}", bounds::MAX_RATE),
            ));
        }
        if self.max_pending.is_some_and(|n| n == 0 || n > bounds::MAX_PENDING) {
            return Err(invalid(
                format!("{key}.max_pending"),
                format!("must be 1 to {}", bounds::MAX_PENDING),
            ));
        }
        if self.burst.is_some_and(|n| n == 0 || n > bounds::MAX_BURST) {
            return Err(invalid(
                format!("{key}.burst"),
                format!("must be 1 to {}", bounds::MAX_BURST),
            ));
        }
        fn within<T: PartialOrd + fmt::Display + Copy>(
            key: &str,
            field: &str,
            value: Option<T>,
            least: T,
            bound: &bounds::Bound<T>,
        ) -> Result<(), Error> {
            match value {
                Some(v) if v < least || v > bound.value => Err(invalid(
                    format!("{key}.{field}"),
                    format!("must be {least} to {} ({})", bound.value, bound.from),
                )),
                _ => Ok(()),
            }
        }
        within(key, "max_in_flight", self.max_in_flight, 1, &b.in_flight)?;
        within(key, "max_retries", self.max_retries, 0, &b.retries)?;
        within(key, "max_headers", self.max_headers, 0, &b.headers)?;
        within(key, "max_events", self.max_events, 1, &b.events)?;
        within(key, "max_burst", self.max_burst, 1, &b.burst)?;
        if let Some(t) = self.max_timeout {
            if t.is_zero() || t > b.timeout.value {
                return Err(invalid(
                    format!("{key}.max_timeout"),
                    format!(
                        "must be between 1ms and {} ({})",
                        humantime::format_duration(b.timeout.value),
                        b.timeout.from
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The plan with every limit it leaves out taken from `default` (the
    /// `[plans.default]` table), so no tenant is unlimited by omission.
    pub fn or(&self, default: &PlanConfig) -> PlanConfig {
        PlanConfig {
            max_subscriptions: self.max_subscriptions.or(default.max_subscriptions),
            max_rate_limit: self.max_rate_limit.or(default.max_rate_limit),
            max_pending: self.max_pending.or(default.max_pending),
            events_per_second: self.events_per_second.or(default.events_per_second),
            burst: self.burst.or(default.burst),
            max_in_flight: self.max_in_flight.or(default.max_in_flight),
            max_retries: self.max_retries.or(default.max_retries),
            max_timeout: self.max_timeout.or(default.max_timeout),
            max_headers: self.max_headers.or(default.max_headers),
            max_events: self.max_events.or(default.max_events),
            max_burst: self.max_burst.or(default.max_burst),
            allow_http: self.allow_http.or(default.allow_http),
            allow_private_networks: self.allow_private_networks.or(default.allow_private_networks),
        }
    }

    /// The ingest rate limit of the plan's tenants, if it has one.
    pub fn ingest_limit(&self) -> Option<RateLimit> {
        self.events_per_second.map(|per_second| RateLimit {
            per_second,
            burst: self.burst,
        })
    }
}

/// `[[event_types]]`: one type of the event catalogue.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EventTypeConfig {
    /// Its dotted name (`coupon.redeemed`).
    pub name: String,
    /// What it means, for the tenants reading the catalogue.
    #[serde(default)]
    pub description: String,
    /// A JSON Schema its events' `data` follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<serde_json::Value>,
    /// An example `data`, sent by a subscription's test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub example: Option<serde_json::Value>,
    /// Still sent, but on its way out.
    #[serde(default)]
    pub deprecated: bool,
}

fn default_true() -> bool {
    true
}

impl Config {
    /// Loads the defaults, then `path` (if any), then `HOOKD_` variables, and
    /// validates the result.
    pub fn load(path: Option<&Path>) -> Result<Config, Error> {
        let mut figment = Figment::from(Toml::string(DEFAULTS));
        if let Some(path) = path {
            if !path.exists() {
                return Err(Error::Missing { path: path.to_owned() });
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(Env::prefixed(ENV_PREFIX).ignore(ENV_NOT_CONFIG).split("__"));
        let mut config = Self::from_figment(figment)?;
        config.source = path.map(Path::to_owned);
        Ok(config)
    }

    /// Parses a configuration from TOML text merged over the defaults,
    /// without reading the environment (for tests and embedding).
    pub fn from_toml(text: &str) -> Result<Config, Error> {
        Self::from_figment(Figment::from(Toml::string(DEFAULTS)).merge(Toml::string(text)))
    }

    fn from_figment(figment: Figment) -> Result<Config, Error> {
        let config: Config = figment.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value that parsed but may still be wrong.
    pub fn validate(&self) -> Result<(), Error> {
        let q = &self.queue;
        if q.shards == 0 || q.shards > 256 {
            return Err(invalid("queue.shards", "must be between 1 and 256"));
        }
        if q.lease < Duration::from_secs(1) {
            return Err(invalid("queue.lease", "must be at least 1s"));
        }
        if q.poll_interval.is_zero() || q.poll_interval > Duration::from_secs(10) {
            return Err(invalid("queue.poll_interval", "must be between 1ms and 10s"));
        }
        for (key, d) in [
            ("queue.redis_connect_timeout", q.redis_connect_timeout),
            ("queue.redis_response_timeout", q.redis_response_timeout),
        ] {
            if d < Duration::from_millis(100) || d > Duration::from_secs(300) {
                return Err(invalid(key, format!("{d:?} is out of range: use 100ms to 5m")));
            }
        }
        if let Some(ca) = &q.redis_ca_file {
            if !ca.is_file() {
                return Err(invalid(
                    "queue.redis_ca_file",
                    format!("{} is not a readable file", ca.display()),
                ));
            }
            if !q
                .redis_url
                .as_ref()
                .is_some_and(|u| u.expose().starts_with("rediss://"))
            {
                return Err(invalid(
                    "queue.redis_ca_file",
                    "is set, but queue.redis_url is not a rediss:// (TLS) URL",
                ));
            }
        }
        if q.pool_size == 0 {
            return Err(invalid("queue.pool_size", "must be at least 1"));
        }
        if q.redis_wait_replicas > 0
            && (q.redis_wait_timeout.is_zero() || q.redis_wait_timeout >= q.redis_response_timeout)
        {
            return Err(invalid(
                "queue.redis_wait_timeout",
                "must be above 0 and below queue.redis_response_timeout, so a replica that does not answer fails \
                 the enqueue rather than the connection",
            ));
        }
        if !q.dead_retention.is_zero() && q.dead_retention < Duration::from_secs(3600) {
            return Err(invalid(
                "queue.dead_retention",
                "must be at least 1h, or 0s to keep dead deliveries forever",
            ));
        }
        if q.key_prefix.is_empty() || q.key_prefix.contains(['{', '}', ' ']) {
            return Err(invalid(
                "queue.key_prefix",
                "must be non-empty, without braces or spaces",
            ));
        }
        if let Some(url) = &q.redis_url {
            let url = url.expose();
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(invalid("queue.redis_url", "must start with redis:// or rediss://"));
            }
        }
        let srv = &self.server;
        if srv.api_keys.is_empty() && !srv.listen.ip().is_loopback() && !srv.allow_unauthenticated {
            return Err(invalid(
                "server.api_keys",
                format!(
                    "is empty while server.listen ({}) is beyond loopback: anyone reaching it would be an admin. \
                     Set a key, listen on 127.0.0.1, or set server.allow_unauthenticated = true if that is meant",
                    srv.listen
                ),
            ));
        }
        for (n, key) in srv.api_keys.iter().enumerate() {
            // Counted, never shown: the error names the entry, not the key.
            let length = key.expose().chars().count();
            if length < MIN_API_KEY_CHARS {
                return Err(invalid(
                    format!("server.api_keys[{n}]"),
                    format!(
                        "is {length} characters long; an admin key needs at least {MIN_API_KEY_CHARS} \
                         (make one with `openssl rand -hex 16`)"
                    ),
                ));
            }
            if key.expose().chars().any(char::is_whitespace) {
                return Err(invalid(
                    format!("server.api_keys[{n}]"),
                    "holds whitespace, which no bearer token can carry",
                ));
            }
        }
        for (n, host) in srv.allowed_hosts.iter().enumerate() {
            crate::model::Host::parse(host).map_err(|p| invalid(format!("server.allowed_hosts[{n}]"), p))?;
        }
        if srv.metrics_public && srv.metrics_require_key {
            return Err(invalid(
                "server.metrics_require_key",
                "is true while server.metrics_public is true: drop metrics_require_key (deprecated: /metrics \
                 needs an admin key by default while server.api_keys is set)",
            ));
        }
        if srv.tls_cert.is_some() != srv.tls_key.is_some() {
            return Err(invalid(
                if srv.tls_cert.is_some() {
                    "server.tls_key"
                } else {
                    "server.tls_cert"
                },
                "set server.tls_cert and server.tls_key together, or neither",
            ));
        }
        if srv.max_connections == 0 {
            return Err(invalid("server.max_connections", "must be at least 1"));
        }
        if srv.http2_max_streams == 0 || srv.http2_max_streams > 10_000 {
            return Err(invalid("server.http2_max_streams", "must be between 1 and 10000"));
        }
        for (key, d) in [
            ("server.header_read_timeout", srv.header_read_timeout),
            ("server.idle_timeout", srv.idle_timeout),
            ("server.request_timeout", srv.request_timeout),
            ("server.shutdown_timeout", srv.shutdown_timeout),
        ] {
            if d.is_zero() || d > Duration::from_secs(3600) {
                return Err(invalid(key, "must be between 1ms and 1h"));
            }
        }
        let c = &self.console;
        if c.session_ttl < Duration::from_secs(60) || c.session_ttl > Duration::from_secs(30 * 86_400) {
            return Err(invalid("console.session_ttl", "must be between 1m and 30d"));
        }
        if c.link_ttl < Duration::from_secs(10) || c.link_ttl > Duration::from_secs(86_400) {
            return Err(invalid("console.link_ttl", "must be between 10s and 24h"));
        }
        if let Some(url) = &c.public_url {
            let ok = (url.starts_with("https://") || url.starts_with("http://"))
                && !url.contains(['?', '#', ' '])
                && url.len() > "https://".len();
            if !ok {
                return Err(invalid(
                    "console.public_url",
                    "must be an http:// or https:// address without query or fragment, like https://hooks.example.com",
                ));
            }
        }
        let i = &self.ingest;
        if i.max_body_bytes < 64 {
            return Err(invalid("ingest.max_body_bytes", "must be at least 64"));
        }
        if !(1..=MAX_DEPTH_LIMIT).contains(&i.max_depth) {
            return Err(invalid(
                "ingest.max_depth",
                format!("must be 1 to {MAX_DEPTH_LIMIT}: deeper data breaks common receivers' JSON parsers"),
            ));
        }
        if i.max_batch == 0 {
            return Err(invalid("ingest.max_batch", "must be at least 1"));
        }
        if i.stream_group.is_empty() {
            return Err(invalid("ingest.stream_group", "must not be empty"));
        }
        let d = &self.delivery;
        if d.timeout.is_zero() {
            return Err(invalid("delivery.timeout", "must be greater than zero"));
        }
        if d.backoff_initial.is_zero() {
            return Err(invalid("delivery.backoff_initial", "must be greater than zero"));
        }
        if !(d.backoff_multiplier.is_finite() && d.backoff_multiplier >= 1.0) {
            return Err(invalid("delivery.backoff_multiplier", "must be a number >= 1.0"));
        }
        if d.backoff_max < d.backoff_initial {
            return Err(invalid(
                "delivery.backoff_max",
                "must not be less than delivery.backoff_initial",
            ));
        }
        if d.retry_after_max > Duration::from_secs(30 * 86_400) {
            return Err(invalid("delivery.retry_after_max", "must be at most 30d"));
        }
        if d.max_in_flight == 0 || d.max_in_flight > bounds::MAX_PROCESS_IN_FLIGHT {
            return Err(invalid(
                "delivery.max_in_flight",
                format!("must be 1 to {}", bounds::MAX_PROCESS_IN_FLIGHT),
            ));
        }
        // A default cap above the process's is harmless (the dispatcher
        // holds every subscription's cap to the process's), so it is not
        // refused; only an absurd number is.
        if d.max_in_flight_per_subscription == 0 || d.max_in_flight_per_subscription > bounds::MAX_PROCESS_IN_FLIGHT {
            return Err(invalid(
                "delivery.max_in_flight_per_subscription",
                format!("must be 1 to {}", bounds::MAX_PROCESS_IN_FLIGHT),
            ));
        }
        if d.max_retries_limit > bounds::MAX_RETRIES_LIMIT {
            return Err(invalid(
                "delivery.max_retries_limit",
                format!("must be at most {}", bounds::MAX_RETRIES_LIMIT),
            ));
        }
        if d.max_retries > d.max_retries_limit {
            return Err(invalid(
                "delivery.max_retries",
                above(d.max_retries, &Bounds::of(d).retries),
            ));
        }
        if d.timeout_max.is_zero() || d.timeout_max > bounds::MAX_TIMEOUT_LIMIT {
            return Err(invalid("delivery.timeout_max", "must be between 1ms and 1h"));
        }
        if d.timeout > d.timeout_max {
            return Err(invalid(
                "delivery.timeout",
                above(
                    humantime::format_duration(d.timeout),
                    &duration_bound(&Bounds::of(d).timeout),
                ),
            ));
        }
        if let Some(ca) = &d.ca_file {
            if !ca.is_file() {
                return Err(invalid(
                    "delivery.ca_file",
                    format!("{} is not a readable file", ca.display()),
                ));
            }
        }
        self.plugins.validate()?;
        self.notify.validate()?;
        let h = &self.history;
        if h.max_age < Duration::from_secs(60) {
            return Err(invalid("history.max_age", "must be at least 1m"));
        }
        if h.max_count == 0 {
            return Err(invalid("history.max_count", "must be at least 1"));
        }
        if h.response_body_limit > 1024 * 1024 {
            return Err(invalid(
                "history.response_body_limit",
                "must be at most 1048576 (1 MiB)",
            ));
        }
        if let Some(url) = &h.postgres_url {
            let url = url.expose();
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(invalid(
                    "history.postgres_url",
                    "must start with postgres:// or postgresql://",
                ));
            }
        }
        let tls = h.postgres_tls_in_force()?.map(|(mode, _)| mode);
        if h.postgres_tls.is_some() && h.postgres_url.is_none() {
            return Err(invalid(
                "history.postgres_tls",
                "is set, but history.postgres_url is not",
            ));
        }
        if let Some(ca) = &h.postgres_ca_file {
            postgres::check_ca_file(ca, tls)?;
        }
        if !(1..=256).contains(&h.postgres_pool_size) {
            return Err(invalid("history.postgres_pool_size", "must be 1 to 256"));
        }
        if h.spool_memory.0 < 1024 * 1024 {
            return Err(invalid("history.spool_memory", "must be at least 1MiB"));
        }
        for (name, plan) in &self.plans {
            plan.validate(&format!("plans.{name}"), d)?;
        }
        if self.catalog.tombstone_retention < Duration::from_secs(3600)
            || self.catalog.tombstone_retention > Duration::from_secs(365 * 86_400)
        {
            return Err(invalid("catalog.tombstone_retention", "must be between 1h and 365d"));
        }
        if self.catalog.max_staleness < Duration::from_secs(1) || self.catalog.max_staleness > Duration::from_secs(3600)
        {
            return Err(invalid("catalog.max_staleness", "must be between 1s and 1h"));
        }
        if !(1..=1_000_000).contains(&self.telemetry.max_series) {
            return Err(invalid("telemetry.max_series", "must be 1 to 1000000"));
        }
        let mut tenant_ids = std::collections::HashSet::new();
        for (n, tenant) in self.tenants.iter().enumerate() {
            if !tenant_ids.insert(&tenant.id) {
                return Err(invalid(
                    format!("tenants[{n}].id"),
                    format!("`{}` is declared more than once", tenant.id),
                ));
            }
            if tenant.name.trim().is_empty() {
                return Err(invalid(format!("tenants[{n}].name"), "must not be empty"));
            }
            if let Some(plan) = &tenant.plan {
                self.plan(&format!("tenants[{n}].plan"), plan)?;
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (n, sub) in self.subscriptions.iter().enumerate() {
            let key = format!("subscriptions[{n}]");
            let timeout = sub.timeout.unwrap_or(d.timeout);
            if q.lease <= timeout * 2 {
                return Err(invalid(
                    "queue.lease",
                    format!("{:?} must be more than twice the longest attempt timeout ({timeout:?} of `{}`), or deliveries in flight would be claimed twice", q.lease, sub.name),
                ));
            }
            if !seen.insert(sub.name.as_str()) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("`{}` is used by more than one subscription", sub.name),
                ));
            }
            sub.validate(&key, d)?;
            if let Some(plugin) = &sub.plugin {
                plugin.validate(&format!("subscriptions.{}.plugin", sub.name), &self.plugins)?;
            }
        }
        Ok(())
    }

    /// The plan named `plan`, or an error naming `key` if there is none.
    pub fn plan(&self, key: &str, plan: &str) -> Result<&PlanConfig, Error> {
        self.plans.get(plan).ok_or_else(|| {
            let known: Vec<&str> = self.plans.keys().map(String::as_str).collect();
            invalid(
                key,
                if known.is_empty() {
                    format!("plan `{plan}` does not exist: declare it under [plans.{plan}]")
                } else {
                    format!("plan `{plan}` does not exist; the plans are: {}", known.join(", "))
                },
            )
        })
    }

    /// The subscription named `name`.
    pub fn subscription(&self, name: &str) -> Option<&SubscriptionConfig> {
        self.subscriptions.iter().find(|s| s.name.as_str() == name)
    }

    /// The `whpk_…` public key of every `whsk_` secret, with the key naming
    /// it (`subscriptions.crm.secrets[1]`): not secrets, but what receivers
    /// verify `v1a` signatures with.
    pub fn public_keys(&self) -> Vec<(String, String)> {
        self.subscriptions
            .iter()
            .flat_map(|sub| {
                sub.secrets.iter().enumerate().filter_map(move |(n, secret)| {
                    crate::sign::public_key_of(secret.expose())
                        .map(|public| (format!("subscriptions.{}.secrets[{n}]", sub.name), public))
                })
            })
            .collect()
    }

    /// The effective configuration as TOML, secrets shown as `[redacted]`:
    /// secrets and keys, custom header values, plugin settings' values,
    /// and the userinfo and parameter values of endpoint and Redis URLs.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

impl NotifyConfig {
    fn validate(&self) -> Result<(), Error> {
        if let Some(host) = &self.smtp_host {
            if host.trim().is_empty() {
                return Err(invalid(
                    "notify.smtp_host",
                    "must not be empty; leave it out to turn email off",
                ));
            }
            if self.smtp_tls == SmtpTls::None && self.smtp_username.is_some() && !crate::model::is_local_host(host) {
                return Err(invalid(
                    "notify.smtp_tls",
                    format!(
                        "is \"none\" while smtp_username and smtp_password are set: they would cross the network \
                         to {host} in plain text. Use \"starttls\" or \"tls\", or a relay on loopback"
                    ),
                ));
            }
            if self.from.is_none() {
                return Err(invalid("notify.from", "is required when notify.smtp_host is set"));
            }
        }
        if self.smtp_port == 0 {
            return Err(invalid("notify.smtp_port", "must be between 1 and 65535"));
        }
        if self.smtp_username.is_some() != self.smtp_password.is_some() {
            return Err(invalid(
                if self.smtp_username.is_some() {
                    "notify.smtp_password"
                } else {
                    "notify.smtp_username"
                },
                "set smtp_username and smtp_password together, or neither",
            ));
        }
        if let Some(from) = &self.from {
            check_mailbox("notify.from", from)?;
        }
        for (n, to) in self.to.iter().enumerate() {
            check_mailbox(&format!("notify.to[{n}]"), to)?;
        }
        if self.digest_window.is_zero() || self.digest_window > Duration::from_secs(24 * 3600) {
            return Err(invalid("notify.digest_window", "must be between 1ms and 24h"));
        }
        if self.subject_prefix.contains(['\r', '\n']) {
            return Err(invalid("notify.subject_prefix", "must be one line"));
        }
        Ok(())
    }
}

impl SubscriptionConfig {
    fn validate(&self, key: &str, delivery: &DeliveryConfig) -> Result<(), Error> {
        SubscriptionName::parse(self.name.as_str()).map_err(|p| invalid(format!("{key}.name"), p))?;
        let bounds = Bounds::of(delivery);
        if self.name.as_str().starts_with(STORED_ID_PREFIX) {
            return Err(invalid(
                format!("{key}.name"),
                format!("`{}`: names starting with `{STORED_ID_PREFIX}` are the ids of subscriptions made through the API; choose another", self.name),
            ));
        }
        self.check_fields(&format!("subscriptions.{}.", self.name), &bounds)?;
        for (n, to) in self.notify_to.iter().flatten().enumerate() {
            check_mailbox(&format!("subscriptions.{}.notify_to[{n}]", self.name), to)?;
        }
        Ok(())
    }

    /// The checks every subscription passes, from the TOML file or the API
    /// alike: URL policy, event patterns, secrets, headers and limits.
    /// Problems name the field as `{prefix}{field}` (`url`, `headers.x-a`),
    /// and a value beyond one of `bounds` names the bound too.
    pub fn check_fields(&self, prefix: &str, bounds: &Bounds) -> Result<(), Error> {
        if self.url.len() > bounds::MAX_URL {
            return Err(invalid(
                format!("{prefix}url"),
                format!(
                    "is {} bytes long, above the bound of {}",
                    self.url.len(),
                    bounds::MAX_URL
                ),
            ));
        }
        let uri: http::Uri = self.url.parse().map_err(|e| {
            invalid(
                format!("{prefix}url"),
                format!("`{}` is not a URL: {e}", crate::model::redact_url(&self.url)),
            )
        })?;
        crate::deliver::check_endpoint_url(&uri, &bounds.network)
            .map_err(|refused| invalid(format!("{prefix}url"), refused.to_string()))?;
        if self.events.is_empty() {
            return Err(invalid(
                format!("{prefix}events"),
                "must list at least one pattern (use \"*\" for all)",
            ));
        }
        if self.events.len() > bounds.events.value {
            return Err(invalid(
                format!("{prefix}events"),
                format!(
                    "{} patterns: {}",
                    self.events.len(),
                    above(self.events.len(), &bounds.events)
                ),
            ));
        }
        for pattern in &self.events {
            crate::model::EventPattern::parse(pattern).map_err(|p| invalid(format!("{prefix}events"), p))?;
        }
        if self.secrets.is_empty() {
            return Err(invalid(
                format!("{prefix}secrets"),
                "must hold at least one whsec_ or whsk_ secret",
            ));
        }
        for (n, secret) in self.secrets.iter().enumerate() {
            crate::sign::SigningKey::parse(secret.expose()).map_err(|p| invalid(format!("{prefix}secrets[{n}]"), p))?;
        }
        if self.headers.len() > bounds.headers.value {
            return Err(invalid(
                format!("{prefix}headers"),
                format!(
                    "{} headers: {}",
                    self.headers.len(),
                    above(self.headers.len(), &bounds.headers)
                ),
            ));
        }
        let header_bytes: usize = self.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        if header_bytes > bounds.header_bytes.value {
            return Err(invalid(
                format!("{prefix}headers"),
                format!(
                    "{header_bytes} bytes of names and values: {}",
                    above(header_bytes, &bounds.header_bytes)
                ),
            ));
        }
        for (name, value) in &self.headers {
            crate::model::headers::custom_header(name, value)
                .map_err(|p| invalid(format!("{prefix}headers.{name}"), p))?;
        }
        if let Some(t) = self.timeout {
            if t.is_zero() {
                return Err(invalid(format!("{prefix}timeout"), "must be greater than zero"));
            }
            if t > bounds.timeout.value {
                return Err(invalid(
                    format!("{prefix}timeout"),
                    above(humantime::format_duration(t), &duration_bound(&bounds.timeout)),
                ));
            }
        }
        if let Some(n) = self.max_in_flight {
            if n == 0 {
                return Err(invalid(format!("{prefix}max_in_flight"), "must be at least 1"));
            }
            if n > bounds.in_flight.value {
                return Err(invalid(format!("{prefix}max_in_flight"), above(n, &bounds.in_flight)));
            }
        }
        if let Some(n) = self.max_retries {
            if n > bounds.retries.value {
                return Err(invalid(format!("{prefix}max_retries"), above(n, &bounds.retries)));
            }
        }
        if let Some(limit) = &self.rate_limit {
            if !(limit.per_second.is_finite() && limit.per_second >= 0.001) {
                return Err(invalid(
                    format!("{prefix}rate_limit.per_second"),
                    format!(
                        "{} is out of range: use 0.001 to {}",
                        limit.per_second, bounds.per_second.value
                    ),
                ));
            }
            if limit.per_second > bounds.per_second.value {
                return Err(invalid(
                    format!("{prefix}rate_limit.per_second"),
                    above(limit.per_second, &bounds.per_second),
                ));
            }
            match limit.burst {
                Some(0) => return Err(invalid(format!("{prefix}rate_limit.burst"), "must be at least 1")),
                Some(n) if n > bounds.burst.value => {
                    return Err(invalid(format!("{prefix}rate_limit.burst"), above(n, &bounds.burst)))
                }
                // The burst in force without one is per_second rounded up.
                None if limit.burst() > bounds.burst.value => {
                    return Err(invalid(
                        format!("{prefix}rate_limit.burst"),
                        format!(
                            "absent, it would be per_second rounded up: {}",
                            above(limit.burst(), &bounds.burst)
                        ),
                    ))
                }
                _ => {}
            }
        }
        if let Some(plugin) = &self.plugin {
            check_plugin_settings(&format!("{prefix}plugin.config"), &plugin.config)?;
        }
        Ok(())
    }
}

impl PluginsConfig {
    fn validate(&self) -> Result<(), Error> {
        check_plugin_deadline("plugins.deadline", self.deadline)?;
        if self.queue_timeout < Duration::from_millis(1) || self.queue_timeout > Duration::from_secs(60) {
            return Err(invalid("plugins.queue_timeout", "must be between 1ms and 60s"));
        }
        if self.memory_limit < MIN_PLUGIN_MEMORY || self.memory_limit > ByteSize(4 << 30) {
            return Err(invalid("plugins.memory_limit", "must be between 2MiB and 4GiB"));
        }
        if self.cache_dir.as_os_str().is_empty() {
            return Err(invalid("plugins.cache_dir", "must not be empty"));
        }
        if self.max_instances == 0 || self.max_instances > 10_000 {
            return Err(invalid("plugins.max_instances", "must be between 1 and 10000"));
        }
        if self.max_body_bytes.bytes() == 0 {
            return Err(invalid("plugins.max_body_bytes", "must be greater than zero"));
        }
        for (name, plugin) in &self.registry {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)) {
                return Err(invalid(
                    format!("plugins.registry.{name}"),
                    "names are letters, digits, `-` and `_`",
                ));
            }
            plugin
                .with_config(BTreeMap::new())
                .validate(&format!("plugins.registry.{name}"), self)?;
        }
        Ok(())
    }
}

/// A duration bound as its message shows it (`2m`).
fn duration_bound(b: &bounds::Bound<Duration>) -> bounds::Bound<humantime::FormattedDuration> {
    bounds::Bound {
        value: humantime::format_duration(b.value),
        from: b.from.clone(),
    }
}

/// Checks a plugin's settings against their bounds; `key` names them.
pub fn check_plugin_settings(key: &str, config: &BTreeMap<String, String>) -> Result<(), Error> {
    if config.len() > bounds::MAX_PLUGIN_SETTINGS {
        return Err(invalid(
            key,
            format!(
                "{} settings: at most {} are allowed",
                config.len(),
                bounds::MAX_PLUGIN_SETTINGS
            ),
        ));
    }
    let size: usize = config.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > bounds::MAX_PLUGIN_CONFIG_BYTES {
        return Err(invalid(
            key,
            format!(
                "{size} bytes of keys and values, above the bound of {}",
                bounds::MAX_PLUGIN_CONFIG_BYTES
            ),
        ));
    }
    if config.keys().any(String::is_empty) {
        return Err(invalid(key, "keys must not be empty"));
    }
    Ok(())
}

/// Fewest characters of an entry of `server.api_keys`.
pub const MIN_API_KEY_CHARS: usize = 16;

fn check_plugin_deadline(key: &str, deadline: Duration) -> Result<(), Error> {
    if deadline < Duration::from_millis(1) || deadline > MAX_PLUGIN_DEADLINE {
        return Err(invalid(key, "must be between 1ms and 10s"));
    }
    Ok(())
}

impl PluginConfig {
    /// Checks the entry; `key` is `subscriptions.<name>.plugin`.
    pub fn validate(&self, key: &str, plugins: &PluginsConfig) -> Result<(), Error> {
        if !self.path.is_file() {
            return Err(invalid(
                format!("{key}.path"),
                format!(
                    "{} is not a readable file; build the plugin (plugins/build.sh) or fix the path",
                    self.path.display()
                ),
            ));
        }
        if let Some(deadline) = self.deadline {
            check_plugin_deadline(&format!("{key}.deadline"), deadline)?;
        }
        if let Some(limit) = self.memory_limit {
            if limit < MIN_PLUGIN_MEMORY || limit > plugins.memory_limit {
                return Err(invalid(
                    format!("{key}.memory_limit"),
                    format!(
                        "must be between {MIN_PLUGIN_MEMORY} and plugins.memory_limit ({}); raise plugins.memory_limit first",
                        plugins.memory_limit
                    ),
                ));
            }
        }
        check_plugin_settings(&format!("{key}.config"), &self.config)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn sub(extra: &str) -> String {
        format!(
            "[[subscriptions]]\nname = \"crm\"\nurl = \"https://crm.example.com/hooks\"\nevents = [\"coupon.*\"]\nsecrets = [\"{SECRET}\"]\n{extra}"
        )
    }

    #[test]
    fn defaults_alone_are_valid() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.delivery.max_retries, 5);
        assert_eq!(c.ingest.max_body_bytes, 256 * 1024);
        assert_eq!(c.ingest.max_depth, crate::ingest::DEFAULT_MAX_DEPTH);
        assert_eq!(c.ingest.dedup_window, Duration::from_secs(24 * 3600));
        assert!(c.queue.redis_url.is_none());
    }

    #[test]
    fn a_full_subscription_parses() {
        let c = Config::from_toml(&sub(
            "headers = { \"x-api-key\" = \"k-123\" }\nmax_retries = 2\ntimeout = \"3s\"",
        ))
        .unwrap();
        let s = c.subscription("crm").unwrap();
        assert_eq!(s.max_retries, Some(2));
        assert_eq!(s.timeout, Some(Duration::from_secs(3)));
        assert_eq!(s.headers["x-api-key"], "k-123");
    }

    #[test]
    fn problems_name_the_key() {
        let cases: &[(&str, &str)] = &[
            ("[delivery]\ntimout = \"1s\"", "timout"),
            ("[delivery]\ntimeout = \"soon\"", "timeout"),
            ("[queue]\nshards = 0", "queue.shards"),
            ("[queue]\nredis_url = \"http://x\"", "queue.redis_url"),
            ("[ingest]\nmax_depth = 0", "ingest.max_depth"),
            ("[ingest]\nmax_depth = 101", "ingest.max_depth"),
            ("[delivery]\nbackoff_multiplier = 0.5", "delivery.backoff_multiplier"),
            ("[history]\nmax_count = 0", "history.max_count"),
            ("[history]\nmax_age = \"1s\"", "history.max_age"),
            (
                "[history]\nresponse_body_limit = 99999999",
                "history.response_body_limit",
            ),
            ("[history]\nmax_days = 1", "max_days"),
            ("[history]\npostgres_url = \"mysql://h/db\"", "history.postgres_url"),
            (
                "[history]\npostgres_url = \"postgres://h:notaport/db\"",
                "history.postgres_url",
            ),
            ("[history]\npostgres_pool_size = 0", "history.postgres_pool_size"),
            (
                "[history]\npostgres_url = \"postgres://h@db.internal/db\"\npostgres_tls = \"verify-ca\"",
                "history.postgres_tls",
            ),
            ("[history]\npostgres_tls = \"require\"", "history.postgres_tls"),
            (
                "[history]\npostgres_url = \"postgres://h@db.internal/db\"\npostgres_ca_file = \"/nonexistent/ca.pem\"",
                "history.postgres_ca_file",
            ),
            (
                "[history]\npostgres_url = \"postgres://h@db.internal/db\"\npostgres_ca_file = \"Cargo.toml\"",
                "history.postgres_ca_file",
            ),
            (
                "[history]\npostgres_url = \"postgres://h@db.internal/db\"\npostgres_tls = \"require\"\npostgres_ca_file = \"Cargo.toml\"",
                "history.postgres_ca_file",
            ),
            (
                "[history]\npostgres_url = \"postgres://h@db.internal/db?sslmode=prefer\"",
                "history.postgres_url",
            ),
            ("[history]\nspool_memory = \"1KiB\"", "history.spool_memory"),
            ("[queue]\ndead_retention = \"10m\"", "queue.dead_retention"),
            (
                "[server]\nallowed_hosts = [\"hooks.example.com\", \"https://x\"]",
                "server.allowed_hosts[1]",
            ),
            (
                "[server]\nmetrics_public = true\nmetrics_require_key = true",
                "server.metrics_require_key",
            ),
            (
                "[queue]\nredis_response_timeout = \"10ms\"",
                "queue.redis_response_timeout",
            ),
            ("[queue]\nredis_connect_timeout = \"1h\"", "queue.redis_connect_timeout"),
            (
                "[queue]\nredis_wait_replicas = 1\nredis_wait_timeout = \"5s\"",
                "queue.redis_wait_timeout",
            ),
            (
                "[queue]\nredis_ca_file = \"/nonexistent/ca.pem\"",
                "queue.redis_ca_file",
            ),
            (
                "[queue]\nredis_url = \"redis://h\"\nredis_ca_file = \"Cargo.toml\"",
                "queue.redis_ca_file",
            ),
            ("[delivery]\nretry_after_max = \"60d\"", "delivery.retry_after_max"),
        ];
        for (text, key) in cases {
            let err = Config::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?}: {err}");
        }
    }

    #[test]
    fn endpoint_urls_naming_non_public_addresses_are_refused_at_load() {
        // The delivery client refuses these before connecting: a config
        // (or API) check that let them through made subscriptions whose
        // every delivery died `blocked`.
        for url in [
            "https://127.0.0.1/in",
            "https://10.1.2.3:8443/in",
            "https://[::1]/in",
            "https://169.254.169.254/latest",
        ] {
            let text = sub("").replace("https://crm.example.com/hooks", url);
            let err = Config::from_toml(&text).unwrap_err().to_string();
            assert!(
                err.contains("subscriptions.crm.url") && err.contains("delivery.allow_private_networks = true"),
                "{url}: {err}"
            );
            Config::from_toml(&format!("[delivery]\nallow_private_networks = true\n{text}")).unwrap();
        }
        Config::from_toml(&sub("").replace("crm.example.com", "8.8.8.8")).unwrap();
    }

    #[test]
    fn subscription_problems_name_the_subscription_and_key() {
        let cases: &[(String, &str)] = &[
            (sub("").replace("https://", "http://"), "subscriptions.crm.url"),
            (sub("").replace("coupon.*", "coupon..x"), "subscriptions.crm.events"),
            (sub("").replace(SECRET, "nope"), "subscriptions.crm.secrets[0]"),
            (
                sub("headers = { \"webhook-signature\" = \"x\" }"),
                "subscriptions.crm.headers.webhook-signature",
            ),
            // Sent by hookd on every request: a custom value was silently
            // replaced before it was refused here.
            (
                sub("headers = { \"User-Agent\" = \"crm/1\" }"),
                "subscriptions.crm.headers.User-Agent",
            ),
            (sub("colour = 1"), "colour"),
            (
                sub("rate_limit = { per_second = 0 }"),
                "subscriptions.crm.rate_limit.per_second",
            ),
            (
                sub("rate_limit = { per_second = 5, burst = 0 }"),
                "subscriptions.crm.rate_limit.burst",
            ),
            (sub("rate_limit = { per_second = 5, brust = 2 }"), "brust"),
            (format!("{}\n{}", sub(""), sub("")), "subscriptions[1].name"),
        ];
        for (text, key) in cases {
            let err = Config::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?}: {err}");
        }
    }

    #[test]
    fn ed25519_secrets_are_accepted_and_their_public_keys_listed() {
        const SK: &str = "whsk_VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk=";
        const PK: &str = "whpk_ZlN4eg7dSSqi0moX9hQUk3orrOouK3QVQSlJa248c/g=";
        let text = sub("").replace(&format!("\"{SECRET}\""), &format!("\"{SECRET}\", \"{SK}\""));
        let c = Config::from_toml(&text).unwrap();
        assert_eq!(
            c.public_keys(),
            vec![("subscriptions.crm.secrets[1]".to_string(), PK.to_string())]
        );
        let shown = format!("{} {:?}", c.to_redacted_toml(), c);
        assert!(!shown.contains(&SK[5..]), "{shown}");
        let cases = [
            ("whsk_AAAA", "decodes to 3 bytes"),
            ("whsk_!!", "not valid base64"),
            (PK, "public key"),
        ];
        for (bad, why) in cases {
            let err = Config::from_toml(&sub("").replace(SECRET, bad))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("subscriptions.crm.secrets[0]") && err.contains(why),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn http_is_allowed_when_configured() {
        let text = format!(
            "[delivery]\nallow_http = true\n{}",
            sub("").replace("https://", "http://")
        );
        assert!(Config::from_toml(&text).is_ok());
    }

    #[test]
    fn postgres_tls_is_checked_with_its_ca_file_and_shown() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, params.self_signed(&key).unwrap().pem()).unwrap();
        let c = Config::from_toml(&format!(
            "[history]\npostgres_url = \"postgres://h@db.internal/db\"\npostgres_tls = \"verify-full\"\npostgres_ca_file = {:?}",
            ca.display().to_string()
        ))
        .unwrap();
        assert_eq!(c.history.postgres_tls, Some(PostgresTls::VerifyFull));
        assert!(c.to_redacted_toml().contains("postgres_tls = \"verify-full\""));
        let (mode, because) = c.history.postgres_tls_in_force().unwrap().unwrap();
        assert_eq!((mode, because), (PostgresTls::VerifyFull, "history.postgres_tls"));

        // A CA file whose PEM holds only a key has no certificate.
        let only_key = dir.path().join("key.pem");
        std::fs::write(&only_key, key.serialize_pem()).unwrap();
        let err = Config::from_toml(&format!(
            "[history]\npostgres_url = \"postgres://h@db.internal/db\"\npostgres_ca_file = {:?}",
            only_key.display().to_string()
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("history.postgres_ca_file") && err.contains("no `BEGIN CERTIFICATE`"),
            "{err}"
        );

        // Unset, with the URL's host off loopback: verify-full.
        let c = Config::from_toml("[history]\npostgres_url = \"postgres://h@db.internal/db\"").unwrap();
        assert_eq!(c.history.postgres_tls, None);
        assert_eq!(
            c.history.postgres_tls_in_force().unwrap().map(|(m, _)| m),
            Some(PostgresTls::VerifyFull)
        );
        let c = Config::from_toml("[history]\npostgres_url = \"postgres://h@127.0.0.1/db\"").unwrap();
        assert_eq!(
            c.history.postgres_tls_in_force().unwrap().map(|(m, _)| m),
            Some(PostgresTls::Disable)
        );
        assert!(Config::from_toml("")
            .unwrap()
            .history
            .postgres_tls_in_force()
            .unwrap()
            .is_none());
    }

    #[test]
    fn secrets_are_redacted_everywhere() {
        let c = Config::from_toml(&format!(
            "[server]\napi_keys = [\"key-42-0123456789\"]\n[history]\npostgres_url = \"postgres://hookd:pg-pass-9@db.internal:5432/log\"\n{}",
            sub("")
        ))
        .unwrap();
        let shown = format!("{} {:?}", c.to_redacted_toml(), c);
        assert!(!shown.contains("key-42"), "{shown}");
        assert!(!shown.contains("pg-pass-9"), "{shown}");
        assert!(
            shown.contains("db.internal:5432/log"),
            "the server is still shown: {shown}"
        );
        assert!(!shown.contains(&SECRET[6..]), "{shown}");
        assert!(shown.contains("[redacted]"));
    }

    #[test]
    fn plugin_settings_parse_with_defaults_and_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = dir.path().join("p.wasm");
        std::fs::write(&wasm, b"\0asm").unwrap();
        let c = Config::from_toml(&sub(&format!(
            "[subscriptions.plugin]\npath = {:?}\nconfig = {{ min_amount = 10, mode = \"mask\", on = true }}\ndeadline = \"50ms\"\nmemory_limit = \"16MiB\"",
            wasm.display().to_string()
        )))
        .unwrap();
        assert_eq!(c.plugins.deadline, Duration::from_millis(20));
        assert_eq!(c.plugins.memory_limit, ByteSize(64 << 20));
        assert!(!c.plugins.fresh_instance);
        let p = c.subscription("crm").unwrap().plugin.as_ref().unwrap();
        assert_eq!(p.config["min_amount"], "10");
        assert_eq!(p.config["on"], "true");
        assert_eq!(p.deadline, Some(Duration::from_millis(50)));
        assert_eq!(p.memory_limit, Some(ByteSize(16 << 20)));
        assert_eq!(p.fresh_instance, None);
        assert!(c.to_redacted_toml().contains("memory_limit = \"64MiB\""));
    }

    #[test]
    fn byte_sizes_parse() {
        let cases = [
            ("65536", Some(65536)),
            ("64MiB", Some(64 << 20)),
            ("512 KiB", Some(512 << 10)),
            ("2GB", Some(2_000_000_000)),
            ("1B", Some(1)),
            ("64 MB", Some(64_000_000)),
            ("lots", None),
            ("12XB", None),
            ("-1", None),
        ];
        for (text, want) in cases {
            assert_eq!(ByteSize::parse(text).ok().map(ByteSize::bytes), want, "{text}");
        }
        assert_eq!(ByteSize(3 << 20).to_string(), "3MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
    }

    #[test]
    fn plugin_problems_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = dir.path().join("p.wasm");
        std::fs::write(&wasm, b"\0asm").unwrap();
        let plugin = |extra: &str| {
            sub(&format!(
                "[subscriptions.plugin]\npath = {:?}\n{extra}",
                wasm.display().to_string()
            ))
        };
        let cases: &[(String, &str)] = &[
            (
                sub("[subscriptions.plugin]\npath = \"/nope/x.wasm\""),
                "subscriptions.crm.plugin.path",
            ),
            (plugin("deadline = \"0ms\""), "subscriptions.crm.plugin.deadline"),
            (plugin("deadline = \"1m\""), "subscriptions.crm.plugin.deadline"),
            (
                plugin("memory_limit = \"1GiB\""),
                "subscriptions.crm.plugin.memory_limit",
            ),
            (
                plugin("memory_limit = \"64KiB\""),
                "subscriptions.crm.plugin.memory_limit",
            ),
            (plugin("memory_limit = \"lots\""), "memory_limit"),
            (plugin("colour = 1"), "colour"),
            (plugin("config = { \"\" = \"x\" }"), "subscriptions.crm.plugin.config"),
            ("[plugins]\ndeadline = \"0s\"".to_string(), "plugins.deadline"),
            ("[plugins]\nmemory_limit = 1024".to_string(), "plugins.memory_limit"),
            ("[plugins]\nmax_instances = 0".to_string(), "plugins.max_instances"),
            ("[plugins]\ncolour = 1".to_string(), "colour"),
        ];
        for (text, key) in cases {
            let err = Config::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?}: {err}");
        }
    }

    #[test]
    fn notify_defaults_and_a_full_section() {
        let c = Config::from_toml("").unwrap();
        assert!(c.notify.smtp_host.is_none());
        assert_eq!(c.notify.smtp_port, 587);
        assert_eq!(c.notify.smtp_tls, SmtpTls::Starttls);
        assert_eq!(c.notify.digest_window, Duration::from_secs(60));
        assert_eq!(c.notify.subject_prefix, "[hookd]");

        let text = format!(
            "[notify]\nsmtp_host = \"smtp.example.com\"\nsmtp_tls = \"tls\"\nsmtp_port = 465\nsmtp_username = \"hookd\"\nsmtp_password = \"pw-987\"\nfrom = \"hookd <hookd@example.com>\"\nto = [\"ops@example.com\"]\n{}",
            sub("notify_to = [\"CRM team <crm@example.com>\"]")
        );
        let c = Config::from_toml(&text).unwrap();
        assert_eq!(c.notify.smtp_tls, SmtpTls::Tls);
        assert_eq!(
            c.subscription("crm").unwrap().notify_to.as_deref(),
            Some(&["CRM team <crm@example.com>".to_string()][..])
        );
        let shown = format!("{} {:?}", c.to_redacted_toml(), c);
        assert!(!shown.contains("pw-987"), "{shown}");
    }

    #[test]
    fn notify_problems_name_the_key() {
        let host = "[notify]\nsmtp_host = \"smtp.example.com\"\n";
        let cases: &[(String, &str)] = &[
            (host.to_string(), "notify.from"),
            (format!("{host}from = \"not an address\""), "notify.from"),
            (
                format!("{host}from = \"a@example.com\"\nto = [\"ok@example.com\", \"@@\"]"),
                "notify.to[1]",
            ),
            ("[notify]\nsmtp_tls = \"ssl\"".to_string(), "smtp_tls"),
            ("[notify]\nsmtp_username = \"u\"".to_string(), "notify.smtp_password"),
            (
                format!(
                    "{host}from = \"a@example.com\"\nsmtp_tls = \"none\"\nsmtp_username = \"u\"\nsmtp_password = \"p\""
                ),
                "notify.smtp_tls",
            ),
            (
                "[server]\napi_keys = [\"0123456789abcdef\", \"short\"]".to_string(),
                "server.api_keys[1]`: is 5 characters long",
            ),
            (
                "[server]\napi_keys = [\"0123456789 abcdef\"]".to_string(),
                "server.api_keys[0]`: holds whitespace",
            ),
            ("[notify]\ndigest_window = \"0s\"".to_string(), "notify.digest_window"),
            (sub("notify_to = [\"nobody\"]"), "subscriptions.crm.notify_to[0]"),
        ];
        for (text, key) in cases {
            let err = Config::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?}: {err}");
        }
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's own error type
    fn environment_overrides_nested_keys() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("HOOKD_DELIVERY__MAX_RETRIES", "9");
            jail.set_env("HOOKD_LOG", "debug");
            jail.set_env("HOOKD_CONFIG", "hookd.toml");
            jail.create_file("hookd.toml", "[delivery]\nmax_retries = 2\ntimeout = \"2s\"")?;
            let c = Config::load(Some(Path::new("hookd.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.delivery.max_retries, 9);
            assert_eq!(c.delivery.timeout, Duration::from_secs(2));
            Ok(())
        });
    }
}
