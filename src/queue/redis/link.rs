//! The connection layer every Redis store uses (the queue, the delivery
//! history, the catalogue) and the stream consumer's connections: a pool
//! to one Redis or to a Redis Cluster, Lua script runs over [`Call`]s, and
//! command batches per shard.
//!
//! Every connection is made by [`Clients`] from `[queue]`: connect and
//! response timeouts (`queue.redis_connect_timeout`,
//! `queue.redis_response_timeout`) and, for a `rediss://` URL, TLS with
//! rustls, trusting `queue.redis_ca_file` or else the system's roots.
//!
//! Failures come back as [`Failed`], a message naming the host; each store
//! turns it into its own error type.

use std::time::Duration;

use ::redis::aio::{ConnectionLike, MultiplexedConnection};
use ::redis::cluster::{ClusterClient, ClusterClientBuilder};
use ::redis::cluster_async::ClusterConnection;
use ::redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisError, RedisFuture, Script, Value};
use deadpool::managed::{self, Metrics, Object, PoolConfig, RecycleResult, Timeouts};
use deadpool::Runtime;
use futures_util::future::try_join_all;

use crate::config::QueueConfig;

/// How to reach Redis: the clients of one URL with `[queue]`'s timeouts
/// and TLS roots, for pools and for connections of their own.
#[derive(Clone)]
pub(crate) struct Clients {
    /// The URL.
    url: String,
    /// Whether it is a cluster seed.
    cluster: bool,
    /// `queue.redis_connect_timeout`.
    connect_timeout: Duration,
    /// `queue.redis_response_timeout`.
    response_timeout: Duration,
    /// `queue.redis_ca_file`, read at each connect (so a renewed file is
    /// used by the next connection).
    ca_file: Option<std::path::PathBuf>,
}

impl Clients {
    /// The clients of `url` (a cluster seed if `config.cluster`).
    pub(crate) fn new(url: &str, config: &QueueConfig) -> Clients {
        Clients {
            url: url.to_owned(),
            cluster: config.cluster,
            connect_timeout: config.redis_connect_timeout,
            response_timeout: config.redis_response_timeout,
            ca_file: config.redis_ca_file.clone(),
        }
    }

    /// Whether the URL is a cluster seed.
    pub(crate) fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// How long connecting may take.
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    fn bad_url(&self, e: &dyn std::fmt::Display) -> Failed {
        Failed(format!(
            "cannot use the Redis URL for {}: {e}; check queue.redis_url",
            host_of(&self.url)
        ))
    }

    /// The TLS roots of `queue.redis_ca_file`, if set.
    fn certificates(&self) -> Result<Option<::redis::TlsCertificates>, Failed> {
        let Some(path) = &self.ca_file else {
            return Ok(None);
        };
        let pem = std::fs::read(path)
            .map_err(|e| Failed(format!("cannot read queue.redis_ca_file {}: {e}", path.display())))?;
        Ok(Some(::redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        }))
    }

    /// A client of the single node.
    pub(crate) fn node(&self) -> Result<Client, Failed> {
        match self.certificates()? {
            Some(certificates) => Client::build_with_tls(self.url.as_str(), certificates),
            None => Client::open(self.url.as_str()),
        }
        .map_err(|e| self.bad_url(&e))
    }

    /// The connection settings of a single node's connections, answers
    /// allowed `extra` beyond the response timeout (a blocking read).
    pub(crate) fn node_config(&self, extra: Duration) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.response_timeout + extra))
    }

    /// A client of the cluster, answers allowed `extra` beyond the
    /// response timeout.
    pub(crate) fn cluster(&self, extra: Duration) -> Result<ClusterClient, Failed> {
        let mut builder = ClusterClientBuilder::new(vec![self.url.as_str()])
            .connection_timeout(self.connect_timeout)
            .response_timeout(self.response_timeout + extra);
        if let Some(certificates) = self.certificates()? {
            builder = builder.certs(certificates);
        }
        builder.build().map_err(|e| self.bad_url(&e))
    }
}

/// Makes the pool's connections to a single node. A connection is reused
/// without a check (a PING before each use would double the round trips);
/// one that failed at the connection level is taken out of the pool
/// instead ([`Checkout::failed`]).
struct NodeManager {
    client: Client,
    config: AsyncConnectionConfig,
}

impl managed::Manager for NodeManager {
    type Type = MultiplexedConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<MultiplexedConnection, RedisError> {
        self.client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
    }

    async fn recycle(&self, _: &mut MultiplexedConnection, _: &Metrics) -> RecycleResult<RedisError> {
        Ok(())
    }
}

/// Makes the pool's connections to a cluster. Each follows the topology
/// and reconnects to the nodes itself, so it is reused without a check.
struct ClusterManager {
    client: ClusterClient,
}

impl managed::Manager for ClusterManager {
    type Type = ClusterConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<ClusterConnection, RedisError> {
        self.client.get_async_connection().await
    }

    async fn recycle(&self, _: &mut ClusterConnection, _: &Metrics) -> RecycleResult<RedisError> {
        Ok(())
    }
}

/// A Redis failure, as a message that names the host; the stores map it to
/// their own `Error::Redis`.
#[derive(Debug)]
pub(crate) struct Failed(pub(crate) String);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Connections to one Redis or to a Redis Cluster.
enum Pool {
    /// A single node: one script run may touch every shard.
    Single(managed::Pool<NodeManager>),
    /// A cluster: each shard's keys go to the node owning its slot.
    Cluster(managed::Pool<ClusterManager>),
}

/// One connection taken from the pool, cloneable to run calls concurrently
/// (both kinds multiplex).
#[derive(Clone)]
enum Link {
    /// To a single node.
    Single(MultiplexedConnection),
    /// To a cluster, routing each command by its keys' slot.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Single(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Link::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Single(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
        }
    }
}

/// A pooled connection, kept checked out while its [`Link`] is in use.
enum Checkout {
    /// From the single-node pool.
    Single(Object<NodeManager>),
    /// From the cluster pool.
    Cluster(Object<ClusterManager>),
}

impl Checkout {
    fn link(&self) -> Link {
        match self {
            Checkout::Single(c) => Link::Single((**c).clone()),
            Checkout::Cluster(c) => Link::Cluster((**c).clone()),
        }
    }

    /// After `e` on this connection: a single node's connection that broke
    /// (dropped, or an I/O error) leaves the pool, so the next checkout
    /// makes a new one. A late answer (a timeout) breaks nothing: the
    /// multiplexed connection matches the answer when it comes and drops it.
    fn failed(self, e: &RedisError) {
        if let Checkout::Single(object) = self {
            if e.is_connection_dropped() || e.is_io_error() || e.is_unrecoverable_error() {
                drop(Object::take(object));
            }
        }
    }
}

/// The keys and arguments of one script run.
#[derive(Default)]
pub(crate) struct Call {
    /// KEYS, all in one slot on a cluster.
    pub(crate) keys: Vec<String>,
    /// ARGV.
    pub(crate) args: Vec<Vec<u8>>,
}

impl Call {
    pub(crate) fn arg(&mut self, value: impl ToString) {
        self.args.push(value.to_string().into_bytes());
    }

    /// An optional value: its text, or empty.
    pub(crate) fn opt(&mut self, value: Option<impl ToString>) {
        self.args
            .push(value.map(|v| v.to_string().into_bytes()).unwrap_or_default());
    }

    /// An optional text that may be empty: `=` then the text, or nothing.
    pub(crate) fn marked(&mut self, value: Option<&str>) {
        self.args
            .push(value.map(|v| format!("={v}").into_bytes()).unwrap_or_default());
    }
}

/// A pool of connections to one Redis or a Redis Cluster.
pub(crate) struct Redis {
    /// Connections to Redis.
    pool: Pool,
    /// `host:port` of the URL, without credentials, for error messages.
    host: String,
    /// How long connecting and PING may take.
    connect_timeout: Duration,
}

/// The `host:port` part of a Redis URL, without scheme, credentials or path.
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    rest.split(['/', '?']).next().unwrap_or(rest).to_owned()
}

impl Redis {
    /// Opens a pool of `config.pool_size` connections to `url` (a cluster
    /// seed if `config.cluster`) and checks that Redis answers.
    pub(crate) async fn connect(url: &str, config: &QueueConfig) -> Result<Redis, Failed> {
        let clients = Clients::new(url, config);
        let host = host_of(url);
        let connect_timeout = clients.connect_timeout();
        let mut pool_config = PoolConfig::new(config.pool_size);
        pool_config.timeouts = Timeouts {
            wait: Some(connect_timeout),
            create: Some(connect_timeout),
            recycle: Some(connect_timeout),
        };
        let built = |e: &dyn std::fmt::Display| Failed(format!("cannot make a Redis pool for {host}: {e}"));
        let pool = if config.cluster {
            let manager = ClusterManager {
                client: clients.cluster(Duration::ZERO)?,
            };
            let pool = managed::Pool::builder(manager)
                .config(pool_config)
                .runtime(Runtime::Tokio1)
                .build();
            Pool::Cluster(pool.map_err(|e| built(&e))?)
        } else {
            let manager = NodeManager {
                client: clients.node()?,
                config: clients.node_config(Duration::ZERO),
            };
            let pool = managed::Pool::builder(manager)
                .config(pool_config)
                .runtime(Runtime::Tokio1)
                .build();
            Pool::Single(pool.map_err(|e| built(&e))?)
        };
        let redis = Redis {
            pool,
            host,
            connect_timeout,
        };
        redis.ping().await.map_err(|e| {
            Failed(format!(
                "{e}; check that Redis is running at {} and that queue.redis_url (and queue.cluster = {}) is right",
                redis.host, config.cluster
            ))
        })?;
        Ok(redis)
    }

    /// Checks that Redis answers PING within `queue.redis_connect_timeout`.
    pub(crate) async fn ping(&self) -> Result<(), Failed> {
        let checkout = self.checkout().await?;
        let mut link = checkout.link();
        let cmd = ::redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut link);
        match tokio::time::timeout(self.connect_timeout, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.failed("PING", e, checkout)),
            Err(_) => Err(Failed(format!(
                "Redis at {} did not answer PING within {:?} (queue.redis_connect_timeout)",
                self.host, self.connect_timeout
            ))),
        }
    }

    async fn checkout(&self) -> Result<Checkout, Failed> {
        let unreachable = |e: &dyn std::fmt::Display| Failed(format!("no connection to Redis at {}: {e}", self.host));
        match &self.pool {
            Pool::Single(p) => p.get().await.map(Checkout::Single).map_err(|e| unreachable(&e)),
            Pool::Cluster(p) => p.get().await.map(Checkout::Cluster).map_err(|e| unreachable(&e)),
        }
    }

    fn failed(&self, what: &str, e: RedisError, checkout: Checkout) -> Failed {
        checkout.failed(&e);
        Failed(format!("{what} on {}: {e}", self.host))
    }

    /// Whether this is a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.pool, Pool::Cluster(_))
    }

    /// Runs `script` once per call, concurrently, returning each reply.
    pub(crate) async fn eval(
        &self,
        what: &str,
        script: &'static Script,
        calls: Vec<Call>,
    ) -> Result<Vec<Value>, Failed> {
        let checkout = self.checkout().await?;
        let runs = calls.into_iter().map(|call| {
            let mut link = checkout.link();
            async move { invoke(script, &call, &mut link).await }
        });
        try_join_all(runs).await.map_err(|e| self.failed(what, e, checkout))
    }

    /// Runs batches of commands, each batch touching one shard's keys, and
    /// returns each batch's replies: one pipeline on a single node, one per
    /// non-empty batch (concurrently) on a cluster.
    pub(crate) async fn per_shard(&self, what: &str, batches: Vec<Vec<Cmd>>) -> Result<Vec<Vec<Value>>, Failed> {
        if batches.iter().all(Vec::is_empty) {
            return Ok(batches.iter().map(|_| Vec::new()).collect());
        }
        let checkout = self.checkout().await?;
        if !self.is_cluster() {
            let mut pipe = Pipeline::new();
            for cmd in batches.iter().flatten() {
                pipe.add_command(cmd.clone());
            }
            let mut link = checkout.link();
            let mut replies = pipe
                .query_async::<Vec<Value>>(&mut link)
                .await
                .map_err(|e| self.failed(what, e, checkout))?
                .into_iter();
            return Ok(batches
                .iter()
                .map(|b| replies.by_ref().take(b.len()).collect())
                .collect());
        }
        let runs = batches.into_iter().map(|batch| {
            let mut link = checkout.link();
            async move {
                if batch.is_empty() {
                    return Ok(Vec::new());
                }
                let mut pipe = Pipeline::new();
                for cmd in batch {
                    pipe.add_command(cmd);
                }
                pipe.query_async::<Vec<Value>>(&mut link).await
            }
        });
        try_join_all(runs).await.map_err(|e| self.failed(what, e, checkout))
    }

    /// Groups shards into script runs: all in one on a single node, one
    /// each on a cluster.
    pub(crate) fn groups(&self, shards: Vec<u16>) -> Vec<Vec<u16>> {
        if self.is_cluster() {
            shards.into_iter().map(|s| vec![s]).collect()
        } else if shards.is_empty() {
            Vec::new()
        } else {
            vec![shards]
        }
    }

    /// [`Redis::eval`], each call followed on the same connection by
    /// `WAIT replicas timeout` on the node it ran on (on a cluster, the
    /// master of its first key's slot): a call answers only once that many
    /// replicas have every write made so far on that connection, its own
    /// among them, and fails if fewer acknowledged within `timeout` (its
    /// writes are on the master then, but a failover could lose them).
    /// With `replicas` 0 it is [`Redis::eval`].
    pub(crate) async fn eval_replicated(
        &self,
        what: &str,
        script: &'static Script,
        calls: Vec<Call>,
        replicas: u32,
        timeout: Duration,
    ) -> Result<Vec<Value>, Failed> {
        use ::redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
        if replicas == 0 {
            return self.eval(what, script, calls).await;
        }
        let checkout = self.checkout().await?;
        let runs = calls.into_iter().map(|call| {
            let mut link = checkout.link();
            async move {
                let reply = invoke(script, &call, &mut link).await?;
                let mut wait = ::redis::cmd("WAIT");
                wait.arg(replicas).arg(timeout.as_millis() as u64);
                let acked = match &mut link {
                    Link::Single(c) => wait.query_async::<i64>(c).await?,
                    Link::Cluster(c) => {
                        let key = call.keys.first().map(String::as_str).unwrap_or_default();
                        let node = SingleNodeRoutingInfo::SpecificNode(Route::with_key(key, SlotAddr::Master));
                        let value = c.route_command(wait, RoutingInfo::SingleNode(node)).await?;
                        ::redis::from_redis_value::<i64>(value)?
                    }
                };
                Ok::<_, RedisError>((reply, acked))
            }
        });
        let replies = try_join_all(runs).await.map_err(|e| self.failed(what, e, checkout))?;
        if let Some((_, acked)) = replies.iter().find(|(_, acked)| *acked < i64::from(replicas)) {
            return Err(Failed(format!(
                "{what} on {}: written, but only {acked} of {replicas} replicas acknowledged it within {timeout:?} \
                 (queue.redis_wait_replicas, queue.redis_wait_timeout), so a failover could lose it; not confirmed",
                self.host
            )));
        }
        Ok(replies.into_iter().map(|(reply, _)| reply).collect())
    }
}

/// Runs `script` once with `call`'s keys and arguments on `link`.
async fn invoke(script: &Script, call: &Call, link: &mut Link) -> Result<Value, RedisError> {
    let mut invocation = script.prepare_invoke();
    for key in &call.keys {
        invocation.key(key);
    }
    for arg in &call.args {
        invocation.arg(arg.as_slice());
    }
    invocation.invoke_async::<Value>(link).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_shown_without_credentials() {
        assert_eq!(host_of("redis://127.0.0.1:6379/0"), "127.0.0.1:6379");
        assert_eq!(
            host_of("rediss://user:p@ss/w0rd@cache.internal:6380/1?x=y"),
            "cache.internal:6380"
        );
        assert_eq!(host_of("redis://:secret@h"), "h");
    }
}
