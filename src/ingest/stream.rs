//! Redis stream input: producers `XADD <prefix>:events * type <type> data <json> [id <id>] [timestamp <rfc3339>]`.
//!
//! hookd reads the stream through a consumer group (`ingest.stream_group`),
//! so several hookd processes share it. An entry is acknowledged (`XACK`,
//! then `XDEL`: the stream is hookd's inbox and does not grow without
//! bound) only after its event is durably queued, so a crash between read
//! and queue loses nothing: the entry stays pending and is claimed again
//! (`XAUTOCLAIM`) once idle for the queue lease. A malformed entry is
//! copied to `<prefix>:events:rejected` with its reason, then
//! acknowledged: never retried forever, never silently dropped. While
//! the queue is over `ingest.max_queue_depth` ([`super::Backpressure`])
//! nothing is read or claimed: entries wait in the stream.
//!
//! Each process reads as a consumer of its own name. A clean stop removes
//! it from the group if nothing is pending on it, and every consumer
//! removes the names of others idle for a lease with nothing pending (a
//! process that crashed; its entries were taken over first), so restarts
//! do not pile up consumer names. A consumer removed while merely quiet is
//! made again by its next read.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::Value;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{from_parts, Error, Event, Ingestor};
use crate::config::Config;
use crate::queue::redis::link::Clients;

/// Entries read per `XREADGROUP`.
const READ_COUNT: usize = 256;
/// How long one `XREADGROUP` blocks waiting for entries.
const BLOCK: Duration = Duration::from_millis(1000);
/// Rejected entries kept in the rejected stream (approximately).
const REJECTED_MAX_LEN: usize = 100_000;

/// Removes consumers of a group with nothing pending. KEYS: the stream.
/// ARGV: group, idle ms, this consumer's name, `self` (remove this one) or
/// `others` (remove the others idle longer than idle ms). Atomic, so no
/// entry is handed to a consumer while it is removed. Returns how many
/// went.
const REAP_LUA: &str = r#"
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return 0 end
local removed = 0
for _, c in ipairs(consumers) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  local mine = f['name'] == ARGV[3]
  if tonumber(f['pending']) == 0 and ((ARGV[4] == 'self' and mine)
      or (ARGV[4] == 'others' and not mine and tonumber(f['idle']) > tonumber(ARGV[2]))) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    removed = removed + 1
  end
end
return removed
"#;

static REAP: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| redis::Script::new(REAP_LUA));

/// The stream producers `XADD` to.
pub fn stream_key(prefix: &str) -> String {
    format!("{prefix}:events")
}

/// Where malformed entries are copied with their reason.
pub fn rejected_key(prefix: &str) -> String {
    format!("{prefix}:events:rejected")
}

/// Reads the event stream of `config` until `shutdown`.
pub struct StreamConsumer {
    /// Validates, fans out and queues what is read.
    ingestor: Arc<Ingestor>,
    /// `<prefix>:events`.
    key: String,
    /// `<prefix>:events:rejected`.
    rejected: String,
    /// The consumer group.
    group: String,
    /// This process's consumer name in the group.
    consumer: String,
    /// Largest accepted `data` field.
    max_body_bytes: usize,
    /// Deepest nesting of `data` (`ingest.max_depth`).
    max_depth: usize,
    /// Pending entries idle this long belong to a consumer presumed dead.
    claim_idle: Duration,
    /// How to reach Redis (`[queue]`'s URL, timeouts and TLS roots).
    clients: Clients,
}

impl StreamConsumer {
    /// A consumer for `config`'s stream; `None` without a Redis URL.
    pub fn new(config: &Config, ingestor: Arc<Ingestor>) -> Option<StreamConsumer> {
        let clients = Clients::new(config.queue.redis_url.as_ref()?.expose(), &config.queue);
        let prefix = &config.queue.key_prefix;
        Some(StreamConsumer {
            ingestor,
            key: stream_key(prefix),
            rejected: rejected_key(prefix),
            group: config.ingest.stream_group.clone(),
            consumer: format!("hookd-{}-{}", std::process::id(), uuid::Uuid::now_v7().simple()),
            max_body_bytes: config.ingest.max_body_bytes,
            max_depth: config.ingest.max_depth,
            claim_idle: config.queue.lease,
            clients,
        })
    }

    /// Reads until `shutdown`, reconnecting after errors.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut wait = Duration::from_millis(200);
        while !shutdown.is_cancelled() {
            let result = if self.clients.is_cluster() {
                match self.connect_cluster().await {
                    Ok(mut conn) => self.consume(&mut conn, &shutdown).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                }
            } else {
                match self.connect().await {
                    Ok(mut conn) => self.consume(&mut conn, &shutdown).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                }
            };
            match result {
                Ok(()) => break,
                Err(e) => {
                    error!(error = %e, stream = %self.key, retry_in = ?wait, "event stream: reading failed");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
        info!(stream = %self.key, "event stream consumer stopped");
    }

    /// A connection of its own (it blocks in `XREADGROUP`), whose answers
    /// may take [`BLOCK`] beyond `queue.redis_response_timeout`.
    async fn connect(&self) -> Result<redis::aio::MultiplexedConnection, String> {
        let client = self.clients.node().map_err(|e| e.to_string())?;
        client
            .get_multiplexed_async_connection_with_config(&self.clients.node_config(BLOCK))
            .await
            .map_err(|e| e.to_string())
    }

    async fn connect_cluster(&self) -> Result<redis::cluster_async::ClusterConnection, String> {
        let client = self.clients.cluster(BLOCK).map_err(|e| e.to_string())?;
        client.get_async_connection().await.map_err(|e| e.to_string())
    }

    async fn consume<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        shutdown: &CancellationToken,
    ) -> redis::RedisResult<()> {
        self.create_group(conn).await?;
        info!(stream = %self.key, group = %self.group, consumer = %self.consumer, "reading the event stream");
        let mut next_autoclaim = tokio::time::Instant::now();
        let mut paused = false;
        loop {
            // Backpressure: entries wait in the stream while the queue is
            // too deep; nothing read is dropped.
            if self.ingestor.backpressure().is_over() {
                if !paused {
                    warn!(stream = %self.key, "event stream: paused, the queue is over ingest.max_queue_depth");
                    paused = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(BLOCK) => continue,
                    _ = shutdown.cancelled() => {
                        self.reap(conn, "self").await;
                        return Ok(());
                    }
                }
            }
            if paused {
                info!(stream = %self.key, "event stream: resumed");
                paused = false;
            }
            if tokio::time::Instant::now() >= next_autoclaim {
                if let Err(e) = self.autoclaim(conn).await {
                    self.group_lost(conn, e).await?;
                    continue;
                }
                next_autoclaim = tokio::time::Instant::now() + self.claim_idle / 4;
            }
            let mut read = redis::cmd("XREADGROUP");
            read.arg("GROUP")
                .arg(&self.group)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.key)
                .arg(">");
            let reply = tokio::select! {
                reply = read.query_async::<Option<StreamReadReply>>(conn) => match reply {
                    Ok(reply) => reply,
                    Err(e) => {
                        self.group_lost(conn, e).await?;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => {
                    self.reap(conn, "self").await;
                    return Ok(());
                }
            };
            let entries: Vec<StreamId> = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).collect();
            if !entries.is_empty() {
                self.handle(conn, entries).await?;
            }
        }
    }

    /// Creates the consumer group (and the stream) unless it exists,
    /// reading from the stream's start.
    async fn create_group<C: ConnectionLike + Send>(&self, conn: &mut C) -> redis::RedisResult<()> {
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.key)
            .arg(&self.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(conn)
            .await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => Err(e),
            _ => Ok(()),
        }
    }

    /// After `e` from a read: if the consumer group is gone (`NOGROUP`),
    /// Redis lost its data; says so and makes the group again, so reading
    /// goes on at once instead of failing on every read. Any other error
    /// is returned.
    async fn group_lost<C: ConnectionLike + Send>(&self, conn: &mut C, e: redis::RedisError) -> redis::RedisResult<()> {
        if e.code() != Some("NOGROUP") {
            return Err(e);
        }
        error!(
            stream = %self.key,
            group = %self.group,
            "event stream: the consumer group is gone, so Redis lost its data (restarted without persistence, \
             flushed, or failed over to a replica that lacked it): entries added to the stream before, and \
             entries read but not yet queued, are lost with it. Making the group again and reading on"
        );
        self.create_group(conn).await
    }

    /// Removes consumers with nothing pending: this one (`self`, at a
    /// clean stop) or others idle for the lease (`others`). A failure only
    /// leaves a name behind, so it is logged, not returned.
    async fn reap<C: ConnectionLike + Send>(&self, conn: &mut C, which: &str) {
        let removed = REAP
            .key(&self.key)
            .arg(&self.group)
            .arg(self.claim_idle.as_millis() as u64)
            .arg(&self.consumer)
            .arg(which)
            .invoke_async::<u64>(conn)
            .await;
        match removed {
            Ok(0) => {}
            Ok(n) => {
                info!(stream = %self.key, removed = n, which, "event stream: removed consumers with nothing pending")
            }
            Err(e) => warn!(stream = %self.key, error = %e, "event stream: could not remove idle consumers"),
        }
    }

    /// Takes over entries left pending by consumers that went away, then
    /// removes those left with nothing pending.
    async fn autoclaim<C: ConnectionLike + Send>(&self, conn: &mut C) -> redis::RedisResult<()> {
        let mut start = "0-0".to_string();
        loop {
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(&self.key)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(self.claim_idle.as_millis() as u64)
                .arg(&start)
                .arg("COUNT")
                .arg(READ_COUNT)
                .query_async(conn)
                .await?;
            if !reply.claimed.is_empty() {
                info!(count = reply.claimed.len(), stream = %self.key, "event stream: took over pending entries");
                self.handle(conn, reply.claimed).await?;
            }
            if reply.next_stream_id == "0-0" {
                self.reap(conn, "others").await;
                return Ok(());
            }
            start = reply.next_stream_id;
        }
    }

    /// Queues the valid entries, moves the malformed ones aside, then
    /// acknowledges all of them. If queueing fails nothing is acknowledged.
    async fn handle<C: ConnectionLike + Send>(&self, conn: &mut C, entries: Vec<StreamId>) -> redis::RedisResult<()> {
        let mut events = Vec::with_capacity(entries.len());
        let mut rejected = Vec::new();
        for entry in &entries {
            match self.parse(&entry.id, &entry.map) {
                Ok(event) => match self.ingestor.check(&event).await {
                    Ok(()) => events.push(event),
                    Err(reason) => rejected.push((entry, reason)),
                },
                Err(reason) => rejected.push((entry, reason)),
            }
        }
        if !events.is_empty() {
            if let Err(e) = self.ingestor.ingest_batch(events, super::Source::Stream).await {
                // Not acknowledged: read again after the lease (XAUTOCLAIM).
                warn!(error = %e, count = entries.len(), "event stream: could not queue events; they stay pending");
                return Ok(());
            }
        }
        let mut pipe = redis::pipe();
        for (entry, reason) in &rejected {
            // The reason may quote the entry's fields: escaped.
            let shown = crate::telemetry::escape(&reason.to_string()).into_owned();
            warn!(stream = %self.key, entry = %entry.id, reason = %shown, "event stream: malformed entry moved to {}", self.rejected);
            let cmd = pipe
                .cmd("XADD")
                .arg(&self.rejected)
                .arg("MAXLEN")
                .arg("~")
                .arg(REJECTED_MAX_LEN)
                .arg("*");
            cmd.arg("entry").arg(&entry.id).arg("reason").arg(reason.to_string());
            for (field, value) in &entry.map {
                if let Value::BulkString(bytes) = value {
                    cmd.arg(format!("field:{field}")).arg(bytes.as_slice());
                }
            }
            cmd.ignore();
        }
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        pipe.cmd("XACK").arg(&self.key).arg(&self.group).arg(&ids).ignore();
        pipe.cmd("XDEL").arg(&self.key).arg(&ids).ignore();
        pipe.query_async::<()>(conn).await
    }

    /// The event of the entry `entry_id`. One without an `id` field gets
    /// [`entry_event_id`], and one without a `timestamp` the time in its
    /// entry id: the same entry read twice (its acknowledgement was lost,
    /// so it was claimed again) is the same event, and dedups.
    fn parse(&self, entry_id: &str, fields: &HashMap<String, Value>) -> Result<Event, Error> {
        let text = |name: &'static str| -> Result<Option<&str>, Error> {
            match fields.get(name) {
                None => Ok(None),
                Some(Value::BulkString(bytes)) => std::str::from_utf8(bytes).map(Some).map_err(|_| Error::Invalid {
                    field: name,
                    problem: "is not UTF-8".into(),
                }),
                Some(_) => Err(Error::Invalid {
                    field: name,
                    problem: "is not a string".into(),
                }),
            }
        };
        if let Some(unknown) = fields
            .keys()
            .find(|k| !["type", "data", "id", "timestamp", "tenant"].contains(&k.as_str()))
        {
            return Err(Error::Invalid {
                field: "entry",
                problem: format!("has unknown field `{unknown}` (expected type, data, id, timestamp, tenant)"),
            });
        }
        let data = text("data")?;
        if let Some(data) = data {
            if data.len() > self.max_body_bytes {
                return Err(Error::TooLarge {
                    size: data.len(),
                    limit: self.max_body_bytes,
                });
            }
        }
        let timestamp = match text("timestamp")? {
            Some(t) => Some(
                chrono::DateTime::parse_from_rfc3339(t)
                    .map_err(|e| Error::Invalid {
                        field: "timestamp",
                        problem: format!("is not RFC 3339: {e}"),
                    })?
                    .to_utc(),
            ),
            None => entry_time(entry_id),
        };
        let id = match text("id")? {
            Some(id) => id.to_owned(),
            None => entry_event_id(entry_id),
        };
        from_parts(
            text("type")?,
            Some(&id),
            data,
            timestamp,
            text("tenant")?,
            self.max_depth,
        )
    }
}

/// The event id of a stream entry sent without one: `evt_stream_` and the
/// entry's id (`<ms>-<seq>`), unique within the stream and the same each
/// time the entry is read.
pub fn entry_event_id(entry_id: &str) -> String {
    format!("evt_stream_{entry_id}")
}

/// When the entry `<ms>-<seq>` was added, by Redis's clock.
fn entry_time(entry_id: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let ms = entry_id.split_once('-').map_or(entry_id, |(ms, _)| ms);
    chrono::DateTime::from_timestamp_millis(ms.parse().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_without_an_id_or_time_take_them_from_the_entry_id() {
        assert_eq!(entry_event_id("1732640000123-4"), "evt_stream_1732640000123-4");
        crate::model::EventId::parse(&entry_event_id("1732640000123-4")).expect("a valid event id");
        assert_eq!(
            entry_time("1732640000123-4").map(|t| t.timestamp_millis()),
            Some(1_732_640_000_123)
        );
        assert_eq!(entry_time("nonsense"), None);
    }
}
