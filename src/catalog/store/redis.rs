//! The catalogue in Redis (see the parent module).
//!
//! Every key starts with `{prefix}:{catalog}:` (the queue's key prefix,
//! then the hash tag `{catalog}`), so all of them live in one Cluster slot
//! and one Lua script may touch them together:
//!
//! - [`records_key`], a hash: `<kind>/<id>` → the record's body, byte for
//!   byte;
//! - [`version_key`], an integer: the catalogue's version, absent for a
//!   store never written (version 0);
//! - [`uses_key`], a hash: key id → its last use (ms);
//! - [`session_key`], one string per console session or one-time link:
//!   its expiry then its body, expiring in Redis at the same time.
//!
//! Every call is one script run, so a reader never sees a change half
//! applied and [`CatalogStore::apply`] is atomic on a single Redis and on a
//! Cluster alike.

use std::sync::LazyLock;

use ::redis::{Script, Value};

use super::{CatalogStore, Contents, Error, Kind, Record, Write};
use crate::config::QueueConfig;
use crate::model::Millis;
use crate::queue::redis::link::{Call, Failed, Redis};

/// The hash tag every catalogue key carries: one Cluster slot for all.
pub const HASH_TAG: &str = "{catalog}";

/// `{prefix}:{catalog}:`: the start of every catalogue key.
pub fn base(prefix: &str) -> String {
    format!("{prefix}:{HASH_TAG}:")
}

/// `{prefix}:{catalog}:records`, a hash: field `<kind>/<id>` (the kind as
/// [`Kind::as_str`] names it) → the record's body. Written by the apply
/// script only.
pub fn records_key(prefix: &str) -> String {
    format!("{}records", base(prefix))
}

/// `{prefix}:{catalog}:version`, an integer: the catalogue's version,
/// absent until the first write. Incremented once per non-empty apply.
pub fn version_key(prefix: &str) -> String {
    format!("{}version", base(prefix))
}

/// `{prefix}:{catalog}:uses`, a hash: key id → when the key was last used
/// (ms since the epoch, in decimal). Only ever moves forward; not
/// versioned.
pub fn uses_key(prefix: &str) -> String {
    format!("{}uses", base(prefix))
}

/// `{prefix}:{catalog}:session:<id>`, a string: a console session or
/// one-time link ([`CatalogStore::put_session`]), removed by Redis when it
/// expires.
pub fn session_key(prefix: &str, id: &str) -> String {
    format!("{}session:{id}", base(prefix))
}

/// `{prefix}:{catalog}:sessions`, a sorted set: member = a session's id
/// (`s_…`; links are not in it), score = when it expires. Written by
/// put_session (add), take_session and delete_session (remove) and
/// live_sessions (drops the expired), so sessions can be listed.
pub fn sessions_key(prefix: &str) -> String {
    format!("{}sessions", base(prefix))
}

/// The field of a record in [`records_key`]: `<kind>/<id>`.
pub fn record_field(kind: Kind, id: &str) -> String {
    format!("{}/{id}", kind.as_str())
}

/// Most key uses one record-uses script run carries, so no run holds
/// Redis long.
const USES_PER_RUN: usize = 512;

/// The current version. KEYS: version. Returns the stored value (nil if
/// never written).
const VERSION_LUA: &str = r#"
return redis.call('GET', KEYS[1])
"#;

/// Apply. KEYS: records, version. ARGV: three per write: op (`c` create,
/// `p` put, `d` delete, `e` expect this body, `a` expect absent), field
/// (`<kind>/<id>`), body (empty for a delete or `a`). First checks,
/// writing nothing: every expectation against the stored records (a
/// mismatch returns `{'changed', n}`, n = the write's number from 1), and
/// every create, in order, against the stored records and the writes
/// before it in the call (a conflict returns `{'exists', n}`). Then bumps
/// the version (which fails, before any record is written, if it is not
/// an integer), applies the writes in order and returns the new version.
const APPLY_LUA: &str = r#"
local records, version = KEYS[1], KEYS[2]
redis.call('HLEN', records)
local touched = {}
for i = 1, #ARGV, 3 do
  local op, field = ARGV[i], ARGV[i + 1]
  if op == 'e' or op == 'a' then
    local there = redis.call('HGET', records, field)
    if (op == 'a' and there) or (op == 'e' and there ~= ARGV[i + 2]) then
      return {'changed', (i + 2) / 3}
    end
  else
    if op == 'c' then
      local there = touched[field]
      if there == nil then there = redis.call('HEXISTS', records, field) == 1 end
      if there then return {'exists', (i + 2) / 3} end
    end
    touched[field] = op ~= 'd'
  end
end
local v = redis.call('INCR', version)
for i = 1, #ARGV, 3 do
  local op, field = ARGV[i], ARGV[i + 1]
  if op == 'd' then
    redis.call('HDEL', records, field)
  elseif op == 'c' or op == 'p' then
    redis.call('HSET', records, field, ARGV[i + 2])
  end
end
return v
"#;

/// Load. KEYS: records, version. Returns `{version or false, HGETALL}`,
/// read in one step.
const LOAD_LUA: &str = r#"
return {redis.call('GET', KEYS[2]), redis.call('HGETALL', KEYS[1])}
"#;

/// Record uses. KEYS: uses. ARGV: two per use: key id, time (ms). Keeps
/// the later of the stored time and the given one; a stored value that is
/// not a number is replaced.
const RECORD_USES_LUA: &str = r#"
local uses = KEYS[1]
for i = 1, #ARGV, 2 do
  local at = tonumber(ARGV[i + 1])
  local cur = tonumber(redis.call('HGET', uses, ARGV[i]) or '')
  if not cur or at > cur then
    redis.call('HSET', uses, ARGV[i], ARGV[i + 1])
  end
end
return 0
"#;

/// Uses. KEYS: uses. Returns HGETALL.
const USES_LUA: &str = r#"
return redis.call('HGETALL', KEYS[1])
"#;

/// Put a session. KEYS: the session. ARGV: the stored value, its expiry
/// (ms since the epoch).
const PUT_SESSION_LUA: &str = r#"
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[2])
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3]) end
return 0
"#;

/// List live sessions. KEYS: [`sessions_key`]. ARGV: now ms, most to
/// return, the session keys' base (`session:` under the catalogue's tag).
/// Drops expired ids (and ids whose key is gone) from the index; returns
/// {id, stored, ...}, soonest to expire first.
const LIVE_SESSIONS_LUA: &str = r#"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  local v = redis.call('GET', ARGV[3] .. id)
  if v then
    out[#out + 1] = id
    out[#out + 1] = v
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"#;

/// Read a session. KEYS: the session. Returns it, or nil.
const SESSION_LUA: &str = r#"
return redis.call('GET', KEYS[1])
"#;

/// Take a session. KEYS: the session. Returns it (nil if absent) and
/// removes it, in one step.
const TAKE_SESSION_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if v then redis.call('DEL', KEYS[1]) end
if KEYS[2] then redis.call('ZREM', KEYS[2], ARGV[1]) end
return v
"#;

/// Delete a session. KEYS: the session, [`sessions_key`]. ARGV: its id.
const DELETE_SESSION_LUA: &str = r#"
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('DEL', KEYS[1])
"#;

static PUT_SESSION: LazyLock<Script> = LazyLock::new(|| Script::new(PUT_SESSION_LUA));
static SESSION: LazyLock<Script> = LazyLock::new(|| Script::new(SESSION_LUA));
static TAKE_SESSION: LazyLock<Script> = LazyLock::new(|| Script::new(TAKE_SESSION_LUA));
static DELETE_SESSION: LazyLock<Script> = LazyLock::new(|| Script::new(DELETE_SESSION_LUA));
static LIVE_SESSIONS: LazyLock<Script> = LazyLock::new(|| Script::new(LIVE_SESSIONS_LUA));
static VERSION: LazyLock<Script> = LazyLock::new(|| Script::new(VERSION_LUA));
static APPLY: LazyLock<Script> = LazyLock::new(|| Script::new(APPLY_LUA));
static LOAD: LazyLock<Script> = LazyLock::new(|| Script::new(LOAD_LUA));
static RECORD_USES: LazyLock<Script> = LazyLock::new(|| Script::new(RECORD_USES_LUA));
static USES: LazyLock<Script> = LazyLock::new(|| Script::new(USES_LUA));

/// The catalogue in Redis.
pub struct RedisCatalog {
    /// Connections to Redis.
    redis: Redis,
    /// Prefix of every key (`queue.key_prefix`).
    prefix: String,
}

impl From<Failed> for Error {
    fn from(failed: Failed) -> Error {
        Error::Redis(failed.0)
    }
}

impl RedisCatalog {
    /// Connects to the queue's Redis (`queue.redis_url`, a cluster seed if
    /// `queue.cluster`) with a pool of its own of `queue.pool_size`, keeps
    /// its keys under `queue.key_prefix`, and checks that Redis answers.
    pub async fn connect(config: &QueueConfig) -> Result<RedisCatalog, Error> {
        let url = config
            .redis_url
            .as_ref()
            .ok_or_else(|| Error::Redis("queue.redis_url is not set; the Redis catalogue needs it".into()))?
            .expose();
        Ok(RedisCatalog {
            redis: Redis::connect(url, config).await?,
            prefix: config.key_prefix.clone(),
        })
    }

    /// Runs `script` once with `call`, returning its reply.
    async fn run(&self, what: &str, script: &'static Script, call: Call) -> Result<Value, Error> {
        let mut replies = self.redis.eval(what, script, vec![call]).await?.into_iter();
        replies
            .next()
            .ok_or_else(|| Error::Redis(format!("{what}: Redis returned no reply")))
    }

    /// A call on the records and version keys.
    fn records_call(&self) -> Call {
        Call {
            keys: vec![records_key(&self.prefix), version_key(&self.prefix)],
            args: Vec::new(),
        }
    }

    /// A call on the uses key.
    fn uses_call(&self) -> Call {
        Call {
            keys: vec![uses_key(&self.prefix)],
            args: Vec::new(),
        }
    }

    /// A call on one session's key.
    /// A call on session `id`: its key and the index, then its id.
    fn session_call(&self, id: &str) -> Call {
        let mut call = Call {
            keys: vec![session_key(&self.prefix, id), sessions_key(&self.prefix)],
            args: Vec::new(),
        };
        call.arg(id);
        call
    }

    /// A session read by `script` ([`SESSION`] or [`TAKE_SESSION`]),
    /// still valid at `now`.
    async fn read_session(
        &self,
        what: &str,
        script: &'static Script,
        id: &str,
        now: Millis,
    ) -> Result<Option<Vec<u8>>, Error> {
        match self.run(what, script, self.session_call(id)).await? {
            Value::Nil => Ok(None),
            stored => Ok(super::live_session(&bytes_of(stored)?, now)),
        }
    }

    /// The version as stored: absent is 0.
    fn version_of(&self, value: Value) -> Result<u64, Error> {
        let text = match value {
            Value::Nil => return Ok(0),
            Value::Int(n) => n.to_string(),
            other => text(bytes_of(other)?)?,
        };
        text.parse().map_err(|_| {
            Error::Redis(format!(
                "corrupt catalogue: {} holds `{text}`, not a version number",
                version_key(&self.prefix)
            ))
        })
    }
}

#[async_trait::async_trait]
impl CatalogStore for RedisCatalog {
    async fn version(&self) -> Result<u64, Error> {
        let call = Call {
            keys: vec![version_key(&self.prefix)],
            args: Vec::new(),
        };
        let reply = self.run("read the catalogue version", &VERSION, call).await?;
        self.version_of(reply)
    }

    async fn load(&self) -> Result<Contents, Error> {
        let reply = self.run("load the catalogue", &LOAD, self.records_call()).await?;
        let mut parts = match reply {
            Value::Array(items) if items.len() == 2 => items.into_iter(),
            other => return Err(unexpected("the version and the records", &other)),
        };
        let (Some(version), Some(records)) = (parts.next(), parts.next()) else {
            return Err(Error::Redis("load the catalogue: a short reply".into()));
        };
        let version = self.version_of(version)?;
        let mut out = Vec::new();
        for (field, body) in pairs_of(records)? {
            let field = text(field)?;
            let corrupt = |why: &str| {
                Error::Redis(format!(
                    "corrupt catalogue: field `{field}` of {} {why}",
                    records_key(&self.prefix)
                ))
            };
            let (kind, id) = field.split_once('/').ok_or_else(|| corrupt("is not `<kind>/<id>`"))?;
            let kind = Kind::parse(kind).ok_or_else(|| corrupt(&format!("has an unknown kind `{kind}`")))?;
            out.push(Record {
                kind,
                id: id.to_owned(),
                body: bytes_of(body)?,
            });
        }
        out.sort_by(|a, b| (a.kind, &a.id).cmp(&(b.kind, &b.id)));
        Ok(Contents { version, records: out })
    }

    async fn apply(&self, writes: &[Write]) -> Result<u64, Error> {
        for write in writes {
            write.check()?;
        }
        if writes.is_empty() {
            return self.version().await;
        }
        let mut call = self.records_call();
        for write in writes {
            let (kind, id) = write.target();
            let (op, body): (&[u8], &[u8]) = match write {
                Write::Create(r) => (b"c", &r.body),
                Write::Put(r) => (b"p", &r.body),
                Write::Delete { .. } => (b"d", b""),
                Write::Expect { body: Some(body), .. } => (b"e", body),
                Write::Expect { body: None, .. } => (b"a", b""),
            };
            call.args.push(op.to_vec());
            call.args.push(record_field(kind, id).into_bytes());
            call.args.push(body.to_vec());
        }
        match self.run("apply catalogue writes", &APPLY, call).await? {
            Value::Int(v) => {
                u64::try_from(v).map_err(|_| Error::Redis(format!("apply catalogue writes: version {v} is negative")))
            }
            Value::Array(items) => {
                let (changed, n) = match items.as_slice() {
                    [marker, Value::Int(n)] => (
                        matches!(marker, Value::BulkString(m) if m.as_slice() == b"changed")
                            || matches!(marker, Value::SimpleString(m) if m == "changed"),
                        *n,
                    ),
                    _ => return Err(unexpected("a conflict marker", &Value::Array(items))),
                };
                let write = usize::try_from(n)
                    .ok()
                    .and_then(|n| n.checked_sub(1))
                    .and_then(|i| writes.get(i))
                    .ok_or_else(|| {
                        Error::Redis(format!(
                            "apply catalogue writes: conflict on write {n} of {}",
                            writes.len()
                        ))
                    })?;
                let (kind, id) = write.target();
                let id = id.to_owned();
                Err(if changed {
                    Error::Changed { kind, id }
                } else {
                    Error::Exists { kind, id }
                })
            }
            other => Err(unexpected("the new version", &other)),
        }
    }

    async fn record_uses(&self, uses: &[(String, Millis)]) -> Result<(), Error> {
        let calls: Vec<Call> = uses
            .chunks(USES_PER_RUN)
            .map(|chunk| {
                let mut call = self.uses_call();
                for (key, at) in chunk {
                    call.args.push(key.clone().into_bytes());
                    call.arg(at);
                }
                call
            })
            .collect();
        if !calls.is_empty() {
            // Runs commute (each keeps the maximum), so they may run at once.
            self.redis.eval("record key uses", &RECORD_USES, calls).await?;
        }
        Ok(())
    }

    async fn uses(&self) -> Result<Vec<(String, Millis)>, Error> {
        let reply = self.run("read key uses", &USES, self.uses_call()).await?;
        pairs_of(reply)?
            .into_iter()
            .map(|(key, at)| {
                let key = text(key)?;
                let at = text(bytes_of(at)?)?;
                let at = at.parse().map_err(|_| {
                    Error::Redis(format!(
                        "corrupt catalogue: key `{key}` in {} has the use time `{at}`, not a number",
                        uses_key(&self.prefix)
                    ))
                })?;
                Ok((key, at))
            })
            .collect()
    }

    async fn put_session(&self, id: &str, body: &[u8], expires_at: Millis) -> Result<(), Error> {
        let mut call = Call {
            keys: vec![session_key(&self.prefix, id), sessions_key(&self.prefix)],
            args: Vec::new(),
        };
        call.args.push(super::encode_session(body, expires_at));
        call.arg(expires_at);
        // Sessions are indexed for listing; one-time links are not.
        call.arg(if id.starts_with("s_") { id } else { "" });
        self.run("keep a console session", &PUT_SESSION, call).await?;
        Ok(())
    }

    async fn live_sessions(&self, prefix: &str, now: Millis, limit: usize) -> Result<Vec<(String, Vec<u8>)>, Error> {
        let mut call = Call {
            keys: vec![sessions_key(&self.prefix)],
            args: Vec::new(),
        };
        call.arg(now);
        call.arg(limit);
        call.arg(session_key(&self.prefix, ""));
        let Value::Array(items) = self.run("list console sessions", &LIVE_SESSIONS, call).await? else {
            return Err(Error::Redis("unexpected reply from the session listing".into()));
        };
        let mut out = Vec::new();
        let mut items = items.into_iter();
        while let (Some(id), Some(stored)) = (items.next(), items.next()) {
            let id = String::from_utf8(bytes_of(id)?).map_err(|e| Error::Redis(e.to_string()))?;
            if !id.starts_with(prefix) {
                continue;
            }
            if let Some(body) = super::live_session(&bytes_of(stored)?, now) {
                out.push((id, body));
            }
        }
        Ok(out)
    }

    async fn session(&self, id: &str, now: Millis) -> Result<Option<Vec<u8>>, Error> {
        self.read_session("read a console session", &SESSION, id, now).await
    }

    async fn take_session(&self, id: &str, now: Millis) -> Result<Option<Vec<u8>>, Error> {
        self.read_session("spend a one-time link", &TAKE_SESSION, id, now).await
    }

    async fn delete_session(&self, id: &str) -> Result<(), Error> {
        self.run("end a console session", &DELETE_SESSION, self.session_call(id))
            .await?;
        Ok(())
    }
}

fn unexpected(wanted: &str, got: &Value) -> Error {
    Error::Redis(format!("unexpected reply from Redis: wanted {wanted}, got {got:?}"))
}

fn bytes_of(value: Value) -> Result<Vec<u8>, Error> {
    match value {
        Value::BulkString(bytes) => Ok(bytes),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        other => Err(unexpected("a string", &other)),
    }
}

fn text(bytes: Vec<u8>) -> Result<String, Error> {
    String::from_utf8(bytes).map_err(|e| Error::Redis(format!("corrupt catalogue: a non-UTF-8 name: {e}")))
}

/// The field/value pairs of an `HGETALL` reply (a map in RESP3, a flat
/// array in RESP2), values left as they came.
fn pairs_of(value: Value) -> Result<Vec<(Vec<u8>, Value)>, Error> {
    match value {
        Value::Nil => Ok(Vec::new()),
        Value::Map(entries) => entries.into_iter().map(|(k, v)| Ok((bytes_of(k)?, v))).collect(),
        Value::Array(items) => {
            if items.len() % 2 != 0 {
                return Err(Error::Redis(format!(
                    "unexpected reply from Redis: a hash of {} items, not pairs",
                    items.len()
                )));
            }
            let mut out = Vec::with_capacity(items.len() / 2);
            let mut items = items.into_iter();
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                out.push((bytes_of(k)?, v));
            }
            Ok(out)
        }
        other => Err(unexpected("a hash", &other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag() {
        assert_eq!(records_key("hookd"), "hookd:{catalog}:records");
        assert_eq!(version_key("hookd"), "hookd:{catalog}:version");
        assert_eq!(uses_key("hookd"), "hookd:{catalog}:uses");
        assert_eq!(record_field(Kind::EventType, "order.paid"), "event_type/order.paid");
    }

    #[test]
    fn hashes_come_as_pairs() {
        let bulk = |s: &[u8]| Value::BulkString(s.to_vec());
        let pairs = pairs_of(Value::Array(vec![bulk(b"a"), bulk(b"\xff"), bulk(b"b"), bulk(b"2")])).unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[0].0, b"a");
        assert!(pairs_of(Value::Array(vec![bulk(b"a")])).is_err());
        assert!(pairs_of(Value::Nil).unwrap().is_empty());
    }
}
