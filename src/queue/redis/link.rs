//! The connection layer both Redis stores use, the queue and the delivery
//! history: a pool to one Redis or to a Redis Cluster, Lua script runs over
//! [`Call`]s, and command batches per shard.
//!
//! Failures come back as [`Failed`], a message naming the host; each store
//! turns it into its own error type.

use std::time::Duration;

use ::redis::aio::{ConnectionLike, MultiplexedConnection};
use ::redis::cluster_async::ClusterConnection;
use ::redis::{Cmd, Pipeline, RedisError, RedisFuture, Script, Value};
use deadpool_redis::{PoolConfig, Runtime, Timeouts};
use futures_util::future::try_join_all;

use crate::config::QueueConfig;

/// How long connecting, waiting for a pooled connection and PING may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
    Single(deadpool_redis::Pool),
    /// A cluster: each shard's keys go to the node owning its slot.
    Cluster(deadpool_redis::cluster::Pool),
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
    Single(deadpool_redis::Connection),
    /// From the cluster pool.
    Cluster(deadpool_redis::cluster::Connection),
}

impl Checkout {
    fn link(&self) -> Link {
        match self {
            Checkout::Single(c) => Link::Single((**c).clone()),
            Checkout::Cluster(c) => Link::Cluster((**c).clone()),
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
        let host = host_of(url);
        let mut pool_config = PoolConfig::new(config.pool_size);
        pool_config.timeouts = Timeouts {
            wait: Some(CONNECT_TIMEOUT),
            create: Some(CONNECT_TIMEOUT),
            recycle: Some(CONNECT_TIMEOUT),
        };
        let bad_url = |e: &dyn std::fmt::Display| {
            Failed(format!(
                "cannot use the Redis URL for {host}: {e}; check queue.redis_url"
            ))
        };
        let pool = if config.cluster {
            let mut c = deadpool_redis::cluster::Config::from_urls(vec![url.to_owned()]);
            c.pool = Some(pool_config);
            Pool::Cluster(c.create_pool(Some(Runtime::Tokio1)).map_err(|e| bad_url(&e))?)
        } else {
            let mut c = deadpool_redis::Config::from_url(url);
            c.pool = Some(pool_config);
            Pool::Single(c.create_pool(Some(Runtime::Tokio1)).map_err(|e| bad_url(&e))?)
        };
        let redis = Redis { pool, host };
        redis.ping().await.map_err(|e| {
            Failed(format!(
                "{e}; check that Redis is running at {} and that queue.redis_url (and queue.cluster = {}) is right",
                redis.host, config.cluster
            ))
        })?;
        Ok(redis)
    }

    /// Checks that Redis answers PING within the connect timeout.
    pub(crate) async fn ping(&self) -> Result<(), Failed> {
        let checkout = self.checkout().await?;
        let mut link = checkout.link();
        let cmd = ::redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut link);
        match tokio::time::timeout(CONNECT_TIMEOUT, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.failed("PING", e)),
            Err(_) => Err(Failed(format!(
                "Redis at {} did not answer PING within {CONNECT_TIMEOUT:?}",
                self.host
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

    fn failed(&self, what: &str, e: RedisError) -> Failed {
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
            async move {
                let mut invocation = script.prepare_invoke();
                for key in &call.keys {
                    invocation.key(key);
                }
                for arg in &call.args {
                    invocation.arg(arg.as_slice());
                }
                invocation.invoke_async::<Value>(&mut link).await
            }
        });
        try_join_all(runs).await.map_err(|e| self.failed(what, e))
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
                .map_err(|e| self.failed(what, e))?
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
        try_join_all(runs).await.map_err(|e| self.failed(what, e))
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
