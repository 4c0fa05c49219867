//! Noticing that Redis lost its data while hookd runs.
//!
//! Redis run without persistence (or flushed, or failed over to a replica
//! that never had a key) comes back empty, and nothing in the queue's own
//! keys says so: an empty `due` set is an idle queue too. So the Redis
//! backend keeps one marker, [`epoch_key`], holding the time it was first
//! written and a random tag. Every process reads it every
//! [`CHECK_EVERY`], writing it if it is missing; a marker that is gone or
//! different from the one the process saw last means Redis lost what it
//! held, and the process says so once, as an error naming what went with
//! it. Nothing is stopped: hookd goes on with what Redis holds now (its
//! keys and the stream's consumer group are made again as they are
//! used), so new events are queued and delivered.
//!
//! The marker lives under the subscription state's hash tag
//! ([`super::redis::STATE_TAG`]); written once, it is on every replica long
//! before any failover, so a failover that keeps the data does not raise
//! the error.

use std::sync::LazyLock;
use std::time::Duration;

use ::redis::{Script, Value};
use tokio_util::sync::CancellationToken;

use super::redis::link::{Call, Redis};
use super::redis::STATE_TAG;
use crate::config::QueueConfig;

/// How often each process reads the marker.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// `{prefix}:{s}:epoch`, a string: `<ms>-<tag>`, when the marker was
/// written and a random tag. Written by the first process to find it
/// missing; never changed while Redis keeps its data.
pub fn epoch_key(prefix: &str) -> String {
    format!("{prefix}:{{{STATE_TAG}}}:epoch")
}

/// KEYS: the marker. ARGV: the value to write if it is missing. Returns
/// the marker in force.
const EPOCH_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
"#;

static EPOCH: LazyLock<Script> = LazyLock::new(|| Script::new(EPOCH_LUA));

/// What was lost when the marker went, for the error.
pub const LOST: &str = "every delivery queued before (due, retrying, parked or dead), the event ids \
    remembered for dedup, subscription states (a disabled subscription is enabled again) and rate \
    buckets, the event stream's consumer group with the entries not yet queued, tenants, keys and \
    subscriptions made through the API (the config file's remain), and the delivery log if it is kept \
    in Redis";

/// Reads the marker every [`CHECK_EVERY`] until `shutdown`, logging an
/// error each time it finds Redis lost its data.
pub async fn watch(config: QueueConfig, shutdown: CancellationToken) {
    let Some(url) = config.redis_url.as_ref().map(|u| u.expose().to_owned()) else {
        return;
    };
    let key = epoch_key(&config.key_prefix);
    let mut redis: Option<Redis> = None;
    let mut seen: Option<String> = None;
    loop {
        if redis.is_none() {
            redis = Redis::connect(&url, &config).await.ok();
        }
        if let Some(redis) = &redis {
            // A failure here is also every other Redis call's: theirs are
            // logged where they happen.
            if let Ok(now) = read(redis, &key).await {
                if let Some(before) = seen.as_deref().filter(|before| *before != now) {
                    tracing::error!(
                        marker = %key,
                        before = %before,
                        now = %now,
                        "Redis lost its data: the marker {key} hookd keeps there is gone or replaced, so Redis \
                         restarted without persistence, was flushed, or failed over to a replica that lacked it. \
                         Lost with it: {LOST}. hookd carries on with what Redis holds now: new events are queued \
                         and delivered"
                    );
                }
                seen = Some(now);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
}

/// The marker in force, written first if missing.
async fn read(redis: &Redis, key: &str) -> Result<String, super::Error> {
    let mut call = Call {
        keys: vec![key.to_owned()],
        args: Vec::new(),
    };
    call.arg(format!("{}-{}", super::now_ms(), uuid::Uuid::now_v7().simple()));
    let reply = redis.eval("epoch", &EPOCH, vec![call]).await?.pop();
    match reply {
        Some(Value::BulkString(bytes)) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Some(Value::SimpleString(text)) => Ok(text),
        other => Err(super::Error::Redis(format!(
            "unexpected reply from Redis: wanted the epoch marker, got {other:?}"
        ))),
    }
}
