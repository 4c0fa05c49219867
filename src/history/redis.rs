//! Redis history: one hash and one list per delivery, lexicographic sorted
//! sets as listing indices, one hash tag per shard.
//!
//! Every key of shard `N` starts with `{prefix}:h:{N}:` (the queue's key
//! prefix, `h` for history, the shard's hash tag), so a shard's keys share
//! one Cluster slot and a script may touch them together. A delivery lives
//! in the shard its id names ([`DeliveryId::shard`]), which the queue makes
//! the shard of its event ([`crate::queue::shard_of`]); an event's record
//! lives in its event's shard.
//!
//! The indices are sorted sets whose members all score 0 and are the
//! delivery's listing position (`{created_at:016x}{id}`, see the module
//! docs of [`super`]), so Redis orders them as text: `ZREVRANGEBYLEX` pages
//! them newest first from an exact cursor, and time ranges are lex ranges.
//!
//! An event of a tenant is kept under its event key (`<tenant>/<event id>`,
//! [`super::event_key`]; the plain event id for an event of no tenant, as
//! before tenants) in its event id's shard. A delivery with an owner
//! ([`DeliverySummary::owner`]) is also in the owner's indices
//! (`tenant:<owner>…`), which the scripts find through the summary's `o`
//! field: the ownership rule is applied once, in Rust, when the delivery
//! is created.
//!
//! Writes are one Lua script per shard group and call: on a single Redis
//! every shard of a [`History::record`] call goes to one script run (one
//! round trip); on a cluster each shard's run goes to its node, all
//! concurrently. The scripts receive one key per shard (its `time` index)
//! and derive the shard's other keys from it, all in the same slot.
//! Reads that span shards (listing, an event, stats) query every shard and
//! merge: one pipeline on a single Redis, one per shard concurrently on a
//! cluster.
//!
//! The per-minute activity ([`super::activity`]) is one hash per minute and
//! view ([`activity_key`]), in the shard the minute's number names, so the
//! minutes of a day spread over every shard. After a record call's scripts,
//! its deltas go in one more round of pipelines: an `HINCRBY` per field
//! changed and one `EXPIRE` ([`activity::RETENTION`]) per key. They are not
//! atomic with the scripts: a failure between the two loses that batch's
//! counts, never more (the log itself is best effort the same way).

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use ::redis::{Cmd, Script, Value};
use futures_util::future::try_join_all;

use super::activity::{self, MinuteRecord, LATENCY_BUCKETS};
use super::{
    parse_cursor, position, time_prefix, Activity, AttemptRecord, Counters, DeliveryState, DeliverySummary, Entry,
    Error, EventRecord, History, ListFilter, Page, SubscriptionStats, TRIM_BATCH,
};
use crate::config::{HistoryConfig, QueueConfig, SubscriptionName};
use crate::ingest::EventId;
use crate::model::TenantId;
use crate::queue::redis::link::{Call, Failed, Redis};
use crate::queue::{shard_of, DeliveryId, Millis};

/// `{prefix}:h:{N}:`: the start of every history key of shard `N`.
pub fn shard_base(prefix: &str, shard: u16) -> String {
    format!("{prefix}:h:{{{shard}}}:")
}

/// `{prefix}:h:{N}:d:<delivery id>`, a hash: the delivery's summary, one
/// field per [`DeliverySummary`] field (absent options are absent fields,
/// so `tenant` is absent for an event of no tenant) plus `m`, its listing
/// position, and `o`, its owner ([`DeliverySummary::owner`], absent if
/// none), which names its `tenant:` indices. Written by the record script;
/// deleted by the trim script.
pub fn summary_key(prefix: &str, shard: u16, id: &str) -> String {
    format!("{}d:{id}", shard_base(prefix, shard))
}

/// `{prefix}:h:{N}:a:<delivery id>`, a list: the delivery's attempts as
/// [`AttemptRecord`] JSON, oldest first. Appended by the record script;
/// deleted by the trim script.
pub fn attempts_key(prefix: &str, shard: u16, id: &str) -> String {
    format!("{}a:{id}", shard_base(prefix, shard))
}

/// `{prefix}:h:{N}:<index>`, a sorted set of listing positions, all scored
/// 0: `time` (every delivery of the shard), `sub:<name>`, `state:<state>`
/// and `sub:<name>:state:<state>`; for the deliveries a tenant owns, also
/// `tenant:<tenant>`, `tenant:<tenant>:sub:<name>`,
/// `tenant:<tenant>:state:<state>` and
/// `tenant:<tenant>:sub:<name>:state:<state>`. Written by the record script
/// (state indices move with the state) and the trim script (removes).
pub fn index_key(prefix: &str, shard: u16, index: &str) -> String {
    format!("{}{index}", shard_base(prefix, shard))
}

/// `{prefix}:h:{N}:event:<event key>`, a set: ids of the event's deliveries
/// in shard `N`. The event key is the event id for an event of no tenant,
/// `<tenant>/<event id>` for a tenant's ([`super::event_key`]). Written by
/// the record script; the trim script removes.
pub fn event_key(prefix: &str, shard: u16, event: &str) -> String {
    format!("{}event:{event}", shard_base(prefix, shard))
}

/// `{prefix}:h:{N}:stats:<subscription>`, a hash: count of the
/// subscription's retained deliveries in shard `N` per state (field = the
/// state's name), `last_success_at` and `last_failure_at` (ms). Written by
/// the record script; the trim script decrements.
pub fn stats_key(prefix: &str, shard: u16, subscription: &str) -> String {
    format!("{}stats:{subscription}", shard_base(prefix, shard))
}

/// `{prefix}:h:{N}:e:<event key>`, a hash: the event's [`EventRecord`]:
/// `type`, `created_at` (ms) and `body` (the bytes as ingested). The event
/// key is the event id, or `<tenant>/<event id>` for a tenant's event
/// ([`super::event_key`]); `N` is the event id's shard ([`shard_of`]).
/// Written once by the record script (the first write wins); deleted by the
/// trim script.
pub fn event_record_key(prefix: &str, shard: u16, event: &str) -> String {
    format!("{}e:{event}", shard_base(prefix, shard))
}

/// `{prefix}:h:{N}:events`, a sorted set: member = event key (as in
/// [`event_record_key`]), score = its record's `created_at` (ms): the event records of shard `N`, oldest
/// first, for trimming. Written by the record script; the trim script
/// removes.
pub fn event_times_key(prefix: &str, shard: u16) -> String {
    format!("{}events", shard_base(prefix, shard))
}

/// `{prefix}:h:{N}:m:<minute>` (the all view) and
/// `{prefix}:h:{N}:m:<minute>:<tenant>` (a tenant's view), hashes: the
/// attempts counted in the minute that starts at `<minute>` (ms)
/// ([`super::activity`]): `s` succeeded, `f` failed, `l0` … `l14` per
/// latency bucket, and in the all view `t:<tenant>` the attempts each
/// tenant owns. `N` is [`activity_shard`]. Added to (`HINCRBY`) after each
/// record call, which also sets its `EXPIRE` to [`activity::RETENTION`].
pub fn activity_key(prefix: &str, shards: u16, minute: Millis, tenant: Option<&str>) -> String {
    let base = shard_base(prefix, activity_shard(minute, shards));
    match tenant {
        None => format!("{base}m:{minute}"),
        Some(tenant) => format!("{base}m:{minute}:{tenant}"),
    }
}

/// The shard of a minute's activity keys: the minute's number (since the
/// epoch) modulo the shards, so consecutive minutes go to every shard in
/// turn.
pub fn activity_shard(minute: Millis, shards: u16) -> u16 {
    let shards = Millis::from(shards.max(1));
    u16::try_from(minute.div_euclid(activity::MINUTE_MS).rem_euclid(shards)).unwrap_or(0)
}

/// The fields of an [`activity_key`] hash a delta changes, with how much:
/// only those it changes.
fn activity_fields(record: &MinuteRecord) -> Vec<(String, u64)> {
    let counts = &record.counts;
    let mut fields = vec![("s".to_owned(), counts.succeeded), ("f".to_owned(), counts.failed)];
    for (i, &n) in counts.latency.iter().enumerate() {
        fields.push((format!("l{i}"), n));
    }
    for (tenant, &n) in &record.tenants {
        fields.push((format!("t:{tenant}"), n));
    }
    fields.retain(|(_, n)| *n > 0);
    fields
}

/// A minute's record from its [`activity_key`] hash's fields.
fn activity_from(key: &str, fields: HashMap<String, String>) -> Result<MinuteRecord, Error> {
    let mut record = MinuteRecord::default();
    for (field, value) in fields {
        let n = value.parse::<u64>().map_err(|_| Error::Corrupt {
            key: key.to_owned(),
            reason: format!("field {field} is not a count: {value}"),
        })?;
        match field.as_str() {
            "s" => record.counts.succeeded = n,
            "f" => record.counts.failed = n,
            _ => {
                if let Some(tenant) = field.strip_prefix("t:") {
                    let tenant = TenantId::parse(tenant).map_err(|reason| Error::Corrupt {
                        key: key.to_owned(),
                        reason,
                    })?;
                    record.tenants.insert(tenant, n);
                } else if let Some(i) = field
                    .strip_prefix('l')
                    .and_then(|i| i.parse::<usize>().ok())
                    .filter(|&i| i < LATENCY_BUCKETS)
                {
                    record.counts.latency[i] = n;
                }
            }
        }
    }
    Ok(record)
}

/// Most entries one record script run applies, so no run holds Redis long.
const ENTRIES_PER_RUN: usize = 512;

/// Most bytes of event bodies one record script run carries (a run holds
/// at least one entry, whatever its size), so no request is huge.
const BODY_BYTES_PER_RUN: usize = 4 << 20;

/// Arguments per entry of [`RECORD_LUA`].
const STRIDE: usize = 18;

/// Record. KEYS: the `time` index of each shard in the group (the other
/// keys of a shard are derived from it). ARGV: [`STRIDE`] fields per entry:
/// kind (`c` created, `a` attempted, `s` state, `e` event record), index of
/// its shard's key in KEYS, delivery id, listing position if new, event id,
/// event type, subscription, state, time (created / started / at), updated
/// or ended time, attempts or attempt number, last status, `=`last error,
/// next attempt time, `=`note or the attempt's JSON or the event's body,
/// `1` if the attempt succeeded, the event's tenant, the delivery's owner
/// ([`DeliverySummary::owner`]). Empty fields are absent values; an event
/// record uses only its event id, type, time, body and tenant. Applies the
/// rules in the module docs of [`super`]; returns how many entries changed
/// something.
const RECORD_LUA: &str = r#"
local S = 18
local function nz(v)
  if v == '' then return false end
  return v
end
local function evkey(ev, tenant)
  if tenant then return tenant .. '/' .. ev end
  return ev
end
local function move(base, sub, o, m, old, new)
  if old == new then return end
  local stats = base .. 'stats:' .. sub
  if old then
    redis.call('ZREM', base .. 'state:' .. old, m)
    redis.call('ZREM', base .. 'sub:' .. sub .. ':state:' .. old, m)
    if o then
      redis.call('ZREM', base .. 'tenant:' .. o .. ':state:' .. old, m)
      redis.call('ZREM', base .. 'tenant:' .. o .. ':sub:' .. sub .. ':state:' .. old, m)
    end
    redis.call('HINCRBY', stats, old, -1)
  end
  redis.call('ZADD', base .. 'state:' .. new, 0, m)
  redis.call('ZADD', base .. 'sub:' .. sub .. ':state:' .. new, 0, m)
  if o then
    redis.call('ZADD', base .. 'tenant:' .. o .. ':state:' .. new, 0, m)
    redis.call('ZADD', base .. 'tenant:' .. o .. ':sub:' .. sub .. ':state:' .. new, 0, m)
  end
  redis.call('HINCRBY', stats, new, 1)
end
local function opt(d, field, v, marked)
  if v == '' then
    redis.call('HDEL', d, field)
  elseif marked then
    redis.call('HSET', d, field, string.sub(v, 2))
  else
    redis.call('HSET', d, field, v)
  end
end
local function later(a, b)
  if not a or tonumber(b) > tonumber(a) then return b end
  return a
end
local function create(base, d, i, state, updated, attempts)
  local id, m, ev, sub = ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 6]
  local tenant, o = nz(ARGV[i + 16]), nz(ARGV[i + 17])
  redis.call('HSET', d, 'm', m, 'event_id', ev, 'event_type', ARGV[i + 5], 'subscription', sub,
    'state', state, 'created_at', ARGV[i + 8], 'updated_at', updated, 'attempts', attempts)
  if tenant then redis.call('HSET', d, 'tenant', tenant) end
  redis.call('ZADD', base .. 'time', 0, m)
  redis.call('ZADD', base .. 'sub:' .. sub, 0, m)
  if o then
    redis.call('HSET', d, 'o', o)
    redis.call('ZADD', base .. 'tenant:' .. o, 0, m)
    redis.call('ZADD', base .. 'tenant:' .. o .. ':sub:' .. sub, 0, m)
  end
  redis.call('SADD', base .. 'event:' .. evkey(ev, tenant), id)
  move(base, sub, o, m, nil, state)
  return o
end
local function event(base, i)
  local ev = evkey(ARGV[i + 4], nz(ARGV[i + 16]))
  local r = base .. 'e:' .. ev
  -- A record kept already stays, unless this one was accepted later (an
  -- id reused after the dedup window): the log keeps the body last taken.
  local old = tonumber(redis.call('HGET', r, 'created_at'))
  if old and old >= tonumber(ARGV[i + 8]) then return 0 end
  redis.call('HSET', r, 'type', ARGV[i + 5], 'created_at', ARGV[i + 8], 'body', ARGV[i + 14])
  redis.call('ZADD', base .. 'events', ARGV[i + 8], ev)
  return 1
end
local applied = 0
for i = 1, #ARGV, S do
  local kind, id = ARGV[i], ARGV[i + 2]
  local time = KEYS[tonumber(ARGV[i + 1])]
  local base = string.sub(time, 1, -5)
  if kind == 'e' then
    applied = applied + event(base, i)
  else
    local d = base .. 'd:' .. id
    local cur = redis.call('HMGET', d, 'm', 'subscription', 'state', 'updated_at', 'attempts', 'o')
    local m, sub, state, updated, attempts, o = cur[1], cur[2], cur[3], cur[4], cur[5], cur[6]
    if kind == 'c' then
      if not m then
        create(base, d, i, ARGV[i + 7], ARGV[i + 9], ARGV[i + 10])
        opt(d, 'last_status', ARGV[i + 11], false)
        opt(d, 'last_error', ARGV[i + 12], true)
        opt(d, 'next_attempt_at', ARGV[i + 13], false)
        opt(d, 'note', ARGV[i + 14], true)
        applied = applied + 1
      elseif ARGV[i + 14] ~= '' and redis.call('HEXISTS', d, 'note') == 0 then
        -- Logged first by its attempt: it still gets its note.
        opt(d, 'note', ARGV[i + 14], true)
        applied = applied + 1
      end
    elseif kind == 'a' then
      local new = ARGV[i + 7]
      if not m then
        o = create(base, d, i, new, ARGV[i + 9], '0')
        m, sub, state, updated, attempts = ARGV[i + 3], ARGV[i + 6], new, ARGV[i + 9], '0'
      end
      redis.call('RPUSH', base .. 'a:' .. id, ARGV[i + 14])
      move(base, sub, o, m, state, new)
      local n = ARGV[i + 10]
      if tonumber(attempts) > tonumber(n) then n = attempts end
      redis.call('HSET', d, 'state', new, 'attempts', n, 'updated_at', later(updated, ARGV[i + 9]))
      opt(d, 'last_status', ARGV[i + 11], false)
      opt(d, 'last_error', ARGV[i + 12], true)
      opt(d, 'next_attempt_at', ARGV[i + 13], false)
      local stats = base .. 'stats:' .. sub
      local field = 'last_failure_at'
      if ARGV[i + 15] == '1' then field = 'last_success_at' end
      redis.call('HSET', stats, field, later(redis.call('HGET', stats, field), ARGV[i + 8]))
      applied = applied + 1
    elseif m then
      local new = ARGV[i + 7]
      move(base, sub, o, m, state, new)
      redis.call('HSET', d, 'state', new, 'updated_at', later(updated, ARGV[i + 8]))
      opt(d, 'note', ARGV[i + 14], true)
      applied = applied + 1
    end
  end
end
return applied
"#;

/// Trim one shard. KEYS: its `time` index. ARGV: the age cutoff as a
/// position prefix (deliveries created before it go), the most deliveries
/// the shard keeps (and the most event records), the most of each to
/// remove now, the age cutoff in ms (event records created before it go).
/// Removes the oldest deliveries first, each with its summary, attempts,
/// index entries (its owner's too, named by the summary's `o`), count and
/// event membership (under its event key, from `event_id` and `tenant`);
/// then the oldest event records (of every tenant: the members of
/// `events` are event keys) by the same rules. Returns how many of both it
/// removed.
const TRIM_LUA: &str = r#"
local time = KEYS[1]
local base = string.sub(time, 1, -5)
local cutoff, cap, batch = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local victims = redis.call('ZRANGEBYLEX', time, '-', '(' .. cutoff, 'LIMIT', 0, batch)
local n = #victims
if n < batch then
  local over = redis.call('ZCARD', time) - n - cap
  if over > 0 then
    local more = redis.call('ZRANGE', time, n, n + math.min(over, batch - n) - 1)
    for _, m in ipairs(more) do victims[#victims + 1] = m end
  end
end
for _, m in ipairs(victims) do
  local id = string.sub(m, 17)
  local d = base .. 'd:' .. id
  local f = redis.call('HMGET', d, 'subscription', 'state', 'event_id', 'tenant', 'o')
  redis.call('ZREM', time, m)
  if f[1] and f[2] then
    local sub, state = f[1], f[2]
    redis.call('ZREM', base .. 'sub:' .. sub, m)
    redis.call('ZREM', base .. 'state:' .. state, m)
    redis.call('ZREM', base .. 'sub:' .. sub .. ':state:' .. state, m)
    if f[5] then
      local t = base .. 'tenant:' .. f[5]
      redis.call('ZREM', t, m)
      redis.call('ZREM', t .. ':sub:' .. sub, m)
      redis.call('ZREM', t .. ':state:' .. state, m)
      redis.call('ZREM', t .. ':sub:' .. sub .. ':state:' .. state, m)
    end
    redis.call('HINCRBY', base .. 'stats:' .. sub, state, -1)
  end
  if f[3] then
    local ev = f[3]
    if f[4] then ev = f[4] .. '/' .. ev end
    redis.call('SREM', base .. 'event:' .. ev, id)
  end
  redis.call('DEL', d, base .. 'a:' .. id)
end
local events = base .. 'events'
local old = redis.call('ZRANGEBYSCORE', events, '-inf', '(' .. ARGV[4], 'LIMIT', 0, batch)
local k = #old
if k < batch then
  local over = redis.call('ZCARD', events) - k - cap
  if over > 0 then
    local more = redis.call('ZRANGE', events, k, k + math.min(over, batch - k) - 1)
    for _, ev in ipairs(more) do old[#old + 1] = ev end
  end
end
for _, ev in ipairs(old) do
  redis.call('ZREM', events, ev)
  redis.call('DEL', base .. 'e:' .. ev)
end
return #victims + #old
"#;

static RECORD: LazyLock<Script> = LazyLock::new(|| Script::new(RECORD_LUA));
static TRIM: LazyLock<Script> = LazyLock::new(|| Script::new(TRIM_LUA));

/// The Redis history backend.
pub struct RedisHistory {
    /// Connections to Redis.
    redis: Redis,
    /// Prefix of every key (`queue.key_prefix`).
    prefix: String,
    /// Number of shards (`queue.shards`).
    shards: u16,
    /// Bytes of a response body kept (`history.response_body_limit`).
    body_limit: usize,
}

impl From<Failed> for Error {
    fn from(failed: Failed) -> Error {
        Error::Redis(failed.0)
    }
}

impl RedisHistory {
    /// Connects to the queue's Redis (`queue.redis_url`, a cluster seed if
    /// `queue.cluster`) with a pool of its own of `queue.pool_size`, keeps
    /// its keys under `queue.key_prefix` in `queue.shards` shards, and
    /// checks that Redis answers.
    pub async fn connect(queue: &QueueConfig, history: &HistoryConfig) -> Result<RedisHistory, Error> {
        let url = queue
            .redis_url
            .as_ref()
            .ok_or_else(|| Error::Redis("queue.redis_url is not set; the Redis history needs it".into()))?
            .expose();
        Ok(RedisHistory {
            redis: Redis::connect(url, queue).await?,
            prefix: queue.key_prefix.clone(),
            shards: queue.shards.max(1),
            body_limit: history.response_body_limit,
        })
    }

    /// The shard an entry's keys live in: its delivery's, or its event's.
    fn shard_of_entry(&self, entry: &Entry) -> u16 {
        match entry {
            Entry::Event(record) => shard_of(&record.id, self.shards),
            _ => entry.delivery_id().map_or(0, DeliveryId::shard),
        }
    }

    /// The record script's call for `entries`, all in `group`'s shards.
    fn record_call(&self, group: &[u16], entries: &[&Entry]) -> Result<Call, Error> {
        let mut call = Call::default();
        for &s in group {
            call.keys.push(index_key(&self.prefix, s, "time"));
        }
        for entry in entries {
            let shard = self.shard_of_entry(entry);
            let g = group.iter().position(|&s| s == shard).unwrap_or(0) + 1;
            let id = entry.delivery_id().map_or("", DeliveryId::as_str);
            match entry {
                Entry::Created(s) => {
                    call.arg("c");
                    call.arg(g);
                    call.arg(id);
                    call.arg(position(s.created_at, id));
                    call.arg(&s.event_id);
                    call.arg(&s.event_type);
                    call.arg(&s.subscription);
                    call.arg(s.state);
                    call.arg(s.created_at);
                    call.arg(s.updated_at);
                    call.arg(s.attempts);
                    call.opt(s.last_status);
                    call.marked(s.last_error.as_deref());
                    call.opt(s.next_attempt_at);
                    call.marked(s.note.as_deref());
                    call.arg("");
                    call.opt(s.tenant.as_ref());
                    call.opt(s.owner());
                }
                Entry::Attempted { attempt, state } => {
                    let scrubbed = super::scrub(attempt, self.body_limit);
                    let json = serde_json::to_vec(&scrubbed).map_err(|e| Error::Corrupt {
                        key: id.to_owned(),
                        reason: format!("attempt does not serialize: {e}"),
                    })?;
                    call.arg("a");
                    call.arg(g);
                    call.arg(id);
                    call.arg(position(attempt.started_at, id));
                    call.arg(&attempt.event_id);
                    call.arg(&attempt.event_type);
                    call.arg(&attempt.subscription);
                    call.arg(state);
                    call.arg(attempt.started_at);
                    call.arg(super::ended_at(attempt));
                    call.arg(attempt.attempt);
                    call.opt(attempt.status);
                    call.marked(attempt.error.as_deref());
                    call.opt(attempt.next_attempt_at);
                    call.args.push(json);
                    call.arg(if *state == DeliveryState::Delivered { "1" } else { "0" });
                    call.opt(attempt.tenant.as_ref());
                    call.opt(crate::model::owner_of(&attempt.subscription, attempt.tenant.as_ref()));
                }
                Entry::State { state, at, note, .. } => {
                    call.arg("s");
                    call.arg(g);
                    call.arg(id);
                    for _ in 0..4 {
                        call.arg("");
                    }
                    call.arg(state);
                    call.arg(at);
                    for _ in 0..5 {
                        call.arg("");
                    }
                    call.marked(note.as_deref());
                    for _ in 0..3 {
                        call.arg("");
                    }
                }
                Entry::Event(record) => {
                    call.arg("e");
                    call.arg(g);
                    call.arg("");
                    call.arg("");
                    call.arg(&record.id);
                    call.arg(&record.event_type);
                    call.arg("");
                    call.arg("");
                    call.arg(record.created_at);
                    for _ in 0..5 {
                        call.arg("");
                    }
                    call.args.push(record.body.to_vec());
                    call.arg("");
                    call.opt(record.tenant.as_ref());
                    call.arg("");
                }
            }
        }
        debug_assert_eq!(call.args.len(), entries.len() * STRIDE);
        Ok(call)
    }

    /// Adds the attempts among `entries` to their minutes' activity
    /// ([`activity::deltas`]): per minute and view, one `HINCRBY` per field
    /// it changes and one `EXPIRE`, in one pipeline per shard.
    async fn count_activity(&self, entries: &[Entry]) -> Result<(), Error> {
        let deltas = activity::deltas(entries);
        if deltas.is_empty() {
            return Ok(());
        }
        let mut batches: Vec<Vec<Cmd>> = (0..self.shards).map(|_| Vec::new()).collect();
        for (key, delta) in &deltas {
            let name = activity_key(
                &self.prefix,
                self.shards,
                key.minute,
                key.view.as_ref().map(TenantId::as_str),
            );
            let batch = &mut batches[usize::from(activity_shard(key.minute, self.shards))];
            for (field, n) in activity_fields(delta) {
                let mut cmd = ::redis::cmd("HINCRBY");
                cmd.arg(&name).arg(field).arg(n);
                batch.push(cmd);
            }
            let mut expire = ::redis::cmd("EXPIRE");
            expire.arg(&name).arg(activity::RETENTION.as_secs());
            batch.push(expire);
        }
        self.redis.per_shard("count activity", batches).await?;
        Ok(())
    }

    /// The summaries of `ids` (each with its shard), in the order given;
    /// ids whose summary is gone (trimmed meanwhile) are left out.
    async fn summaries(&self, ids: &[(u16, String)]) -> Result<Vec<DeliverySummary>, Error> {
        let mut shards: Vec<u16> = ids.iter().map(|(s, _)| *s).collect();
        shards.sort_unstable();
        shards.dedup();
        let batches = shards
            .iter()
            .map(|&s| {
                ids.iter()
                    .filter(|(shard, _)| *shard == s)
                    .map(|(_, id)| {
                        let mut cmd = ::redis::cmd("HGETALL");
                        cmd.arg(summary_key(&self.prefix, s, id));
                        cmd
                    })
                    .collect()
            })
            .collect();
        let mut found: HashMap<&str, DeliverySummary> = HashMap::new();
        for (&s, replies) in shards
            .iter()
            .zip(self.redis.per_shard("read summaries", batches).await?)
        {
            let in_shard = ids.iter().filter(|(shard, _)| *shard == s);
            for ((_, id), reply) in in_shard.zip(replies) {
                let fields = fields_of(reply)?;
                if !fields.is_empty() {
                    found.insert(id.as_str(), summary_from(id, &fields)?);
                }
            }
        }
        Ok(ids.iter().filter_map(|(_, id)| found.remove(id.as_str())).collect())
    }
}

#[async_trait::async_trait]
impl History for RedisHistory {
    async fn record(&self, entries: &[Entry]) -> Result<(), Error> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut shards: Vec<u16> = entries.iter().map(|e| self.shard_of_entry(e)).collect();
        shards.sort_unstable();
        shards.dedup();
        // Chunks of one group run one after another, so entries about one
        // delivery apply in order even when a script has to be (re)loaded;
        // groups (cluster shards) run concurrently.
        let mut runs = Vec::new();
        for group in self.redis.groups(shards) {
            let mine: Vec<&Entry> = entries
                .iter()
                .filter(|e| group.contains(&self.shard_of_entry(e)))
                .collect();
            let calls = runs_of(&mine)
                .map(|chunk| self.record_call(&group, chunk))
                .collect::<Result<Vec<_>, _>>()?;
            runs.push(async move {
                for call in calls {
                    self.redis.eval("record history", &RECORD, vec![call]).await?;
                }
                Ok::<(), Error>(())
            });
        }
        try_join_all(runs).await?;
        self.count_activity(entries).await
    }

    async fn delivery(&self, id: &DeliveryId) -> Result<Option<(DeliverySummary, Vec<AttemptRecord>)>, Error> {
        let s = id.shard();
        let mut summary = ::redis::cmd("HGETALL");
        summary.arg(summary_key(&self.prefix, s, id.as_str()));
        let mut attempts = ::redis::cmd("LRANGE");
        attempts.arg(attempts_key(&self.prefix, s, id.as_str())).arg(0).arg(-1);
        let mut replies = self
            .redis
            .per_shard("read a delivery", vec![vec![summary, attempts]])
            .await?
            .pop()
            .unwrap_or_default()
            .into_iter();
        let fields = fields_of(replies.next().unwrap_or(Value::Nil))?;
        if fields.is_empty() {
            return Ok(None);
        }
        let summary = summary_from(id.as_str(), &fields)?;
        let attempts = match replies.next().unwrap_or(Value::Nil) {
            Value::Nil => Vec::new(),
            Value::Array(items) => items
                .into_iter()
                .map(|item| {
                    let bytes = bytes_of(item)?;
                    serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
                        key: id.to_string(),
                        reason: format!("attempt: {e}"),
                    })
                })
                .collect::<Result<_, _>>()?,
            other => return Err(unexpected("a list of attempts", &other)),
        };
        Ok(Some((summary, attempts)))
    }

    async fn event(&self, tenant: Option<&TenantId>, event_id: &EventId) -> Result<Vec<DeliverySummary>, Error> {
        // The queue puts an event's deliveries in its shard; every shard is
        // asked anyway (one pipeline) so none placed elsewhere is missed.
        let event = super::event_key(tenant, event_id);
        let batches = (0..self.shards)
            .map(|s| {
                let mut cmd = ::redis::cmd("SMEMBERS");
                cmd.arg(event_key(&self.prefix, s, &event));
                vec![cmd]
            })
            .collect();
        let mut ids = Vec::new();
        for (s, replies) in (0..self.shards).zip(self.redis.per_shard("read an event", batches).await?) {
            for reply in replies {
                for member in members_of(reply)? {
                    ids.push((s, member));
                }
            }
        }
        let mut found = self.summaries(&ids).await?;
        found.retain(|s| s.tenant.as_ref() == tenant);
        found.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(found)
    }

    async fn event_record(&self, tenant: Option<&TenantId>, event_id: &EventId) -> Result<Option<EventRecord>, Error> {
        let s = shard_of(event_id, self.shards);
        let key = event_record_key(&self.prefix, s, &super::event_key(tenant, event_id));
        let mut cmd = ::redis::cmd("HMGET");
        cmd.arg(&key).arg("type").arg("created_at").arg("body");
        let reply = self
            .redis
            .per_shard("read an event record", vec![vec![cmd]])
            .await?
            .pop()
            .and_then(|mut replies| replies.pop())
            .unwrap_or(Value::Nil);
        let Value::Array(fields) = reply else {
            return Err(unexpected("the fields of an event record", &reply));
        };
        let mut fields = fields.into_iter();
        let (Some(event_type), Some(created_at), Some(body)) = (fields.next(), fields.next(), fields.next()) else {
            return Err(Error::Redis("HMGET answered fewer than the 3 fields asked".into()));
        };
        if matches!((&event_type, &created_at, &body), (Value::Nil, Value::Nil, Value::Nil)) {
            return Ok(None);
        }
        let corrupt = |reason: String| Error::Corrupt {
            key: key.clone(),
            reason,
        };
        let event_type = text(event_type).map_err(|e| corrupt(format!("type: {e}")))?;
        let created_at = text(created_at)
            .map_err(|e| corrupt(format!("created_at: {e}")))?
            .parse::<Millis>()
            .map_err(|e| corrupt(format!("created_at: {e}")))?;
        let body = bytes_of(body).map_err(|e| corrupt(format!("body: {e}")))?;
        Ok(Some(EventRecord {
            id: event_id.clone(),
            event_type,
            created_at,
            body: bytes::Bytes::from(body),
            tenant: tenant.cloned(),
        }))
    }

    async fn list(
        &self,
        filter: &ListFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<DeliverySummary>, Error> {
        if let Some(cursor) = cursor {
            parse_cursor(cursor)?;
        }
        if limit == 0 {
            return Ok(Page {
                items: Vec::new(),
                next_cursor: None,
            });
        }
        // Exclusive upper bound: the tighter of the cursor and `to`.
        let mut max = "+".to_owned();
        if let Some(to) = filter.to {
            max = format!("({}", time_prefix(to));
        }
        if let Some(cursor) = cursor {
            if max == "+" || cursor < &max[1..] {
                max = format!("({cursor}");
            }
        }
        let min = filter
            .from
            .map_or_else(|| "-".to_owned(), |from| format!("[{}", time_prefix(from)));
        let index = super::index_for(filter);
        let batches = (0..self.shards)
            .map(|s| {
                let mut cmd = ::redis::cmd("ZREVRANGEBYLEX");
                cmd.arg(index_key(&self.prefix, s, &index))
                    .arg(&max)
                    .arg(&min)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit.saturating_add(1));
                vec![cmd]
            })
            .collect();
        let mut positions: Vec<(String, u16)> = Vec::new();
        for (s, replies) in (0..self.shards).zip(self.redis.per_shard("list deliveries", batches).await?) {
            for reply in replies {
                positions.extend(members_of(reply)?.into_iter().map(|m| (m, s)));
            }
        }
        positions.sort_unstable_by(|a, b| b.0.cmp(&a.0));
        let more = positions.len() > limit;
        positions.truncate(limit);
        let next_cursor = if more {
            positions.last().map(|(p, _)| p.clone())
        } else {
            None
        };
        let ids: Vec<(u16, String)> = positions
            .into_iter()
            .map(|(p, s)| (s, p.get(16..).unwrap_or_default().to_owned()))
            .collect();
        Ok(Page {
            items: self.summaries(&ids).await?,
            next_cursor,
        })
    }

    async fn stats(&self, subscription: &SubscriptionName) -> Result<SubscriptionStats, Error> {
        let batches = (0..self.shards)
            .map(|s| {
                let mut cmd = ::redis::cmd("HGETALL");
                cmd.arg(stats_key(&self.prefix, s, subscription.as_str()));
                vec![cmd]
            })
            .collect();
        let mut total = Counters::default();
        for replies in self.redis.per_shard("read stats", batches).await? {
            for reply in replies {
                for (field, value) in fields_of(reply)? {
                    let number = || {
                        value.parse::<i64>().map_err(|_| Error::Corrupt {
                            key: stats_key(&self.prefix, 0, subscription.as_str()),
                            reason: format!("field {field} is not a number: {value}"),
                        })
                    };
                    match field.as_str() {
                        "last_success_at" => {
                            total.last_success_at = total.last_success_at.max(Some(number()?));
                        }
                        "last_failure_at" => {
                            total.last_failure_at = total.last_failure_at.max(Some(number()?));
                        }
                        state => {
                            if let Ok(state) = state.parse::<DeliveryState>() {
                                *total.counts.entry(state).or_default() += number()?;
                            }
                        }
                    }
                }
            }
        }
        Ok(total.stats())
    }

    async fn activity(&self, tenant: Option<&TenantId>, from: Millis, to: Millis) -> Result<Activity, Error> {
        let minutes = activity::window_minutes(from, to);
        let tenant = tenant.map(TenantId::as_str);
        let key = |minute| activity_key(&self.prefix, self.shards, minute, tenant);
        let shard = |minute| usize::from(activity_shard(minute, self.shards));
        let mut batches: Vec<Vec<Cmd>> = (0..self.shards).map(|_| Vec::new()).collect();
        for &minute in &minutes {
            let mut cmd = ::redis::cmd("HGETALL");
            cmd.arg(key(minute));
            batches[shard(minute)].push(cmd);
        }
        let mut replies: Vec<_> = self
            .redis
            .per_shard("read activity", batches)
            .await?
            .into_iter()
            .map(Vec::into_iter)
            .collect();
        let mut records = Vec::with_capacity(minutes.len());
        for &minute in &minutes {
            let reply = replies
                .get_mut(shard(minute))
                .and_then(Iterator::next)
                .unwrap_or(Value::Nil);
            let fields = fields_of(reply)?;
            records.push(if fields.is_empty() {
                None
            } else {
                Some(activity_from(&key(minute), fields)?)
            });
        }
        Ok(activity::assemble(&minutes, records))
    }

    async fn trim(&self, now: Millis, max_age: Duration, max_count: usize) -> Result<u64, Error> {
        let age = Millis::try_from(max_age.as_millis()).unwrap_or(Millis::MAX);
        let cutoff_ms = now.saturating_sub(age);
        let cutoff = time_prefix(cutoff_ms);
        let shards = usize::from(self.shards);
        let cap = max_count.div_ceil(shards);
        let batch = (TRIM_BATCH / shards).max(1);
        let calls = (0..self.shards)
            .map(|s| {
                let mut call = Call {
                    keys: vec![index_key(&self.prefix, s, "time")],
                    args: Vec::new(),
                };
                call.arg(&cutoff);
                call.arg(cap);
                call.arg(batch);
                call.arg(cutoff_ms);
                call
            })
            .collect();
        let replies = self.redis.eval("trim history", &TRIM, calls).await?;
        replies
            .iter()
            .map(|r| int_of(r).map(|n| n.max(0) as u64))
            .sum::<Result<u64, Error>>()
    }
}

/// `entries` cut into script runs of at most [`ENTRIES_PER_RUN`] entries
/// and [`BODY_BYTES_PER_RUN`] bytes of event bodies (at least one entry
/// each), in order.
fn runs_of<'a, 'e>(entries: &'a [&'e Entry]) -> impl Iterator<Item = &'a [&'e Entry]> + 'a {
    let mut rest = entries;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut n = 0;
        let mut bytes = 0;
        while n < rest.len() && n < ENTRIES_PER_RUN {
            bytes += rest[n].body_len();
            if n > 0 && bytes > BODY_BYTES_PER_RUN {
                break;
            }
            n += 1;
        }
        let (run, tail) = rest.split_at(n);
        rest = tail;
        Some(run)
    })
}

/// Builds a summary from its hash's fields.
fn summary_from(id: &str, fields: &HashMap<String, String>) -> Result<DeliverySummary, Error> {
    let corrupt = |reason: String| Error::Corrupt {
        key: id.to_owned(),
        reason,
    };
    let get = |name: &str| {
        fields
            .get(name)
            .ok_or_else(|| corrupt(format!("field {name} is missing")))
    };
    let number = |name: &str| -> Result<Option<i64>, Error> {
        fields
            .get(name)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| corrupt(format!("field {name} is not a number: {v}")))
            })
            .transpose()
    };
    let required = |name: &str| number(name)?.ok_or_else(|| corrupt(format!("field {name} is missing")));
    Ok(DeliverySummary {
        id: DeliveryId::parse(id).map_err(corrupt)?,
        event_id: EventId::parse(get("event_id")?).map_err(corrupt)?,
        event_type: get("event_type")?.clone(),
        subscription: SubscriptionName::parse(get("subscription")?).map_err(corrupt)?,
        state: get("state")?.parse().map_err(corrupt)?,
        attempts: u32::try_from(required("attempts")?).map_err(|e| corrupt(format!("attempts: {e}")))?,
        created_at: required("created_at")?,
        updated_at: required("updated_at")?,
        last_status: number("last_status")?
            .map(u16::try_from)
            .transpose()
            .map_err(|e| corrupt(format!("last_status: {e}")))?,
        last_error: fields.get("last_error").cloned(),
        next_attempt_at: number("next_attempt_at")?,
        note: fields.get("note").cloned(),
        tenant: fields
            .get("tenant")
            .map(|t| TenantId::parse(t))
            .transpose()
            .map_err(corrupt)?,
    })
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

fn text(value: Value) -> Result<String, Error> {
    String::from_utf8(bytes_of(value)?).map_err(|e| Error::Redis(format!("non-UTF-8 reply: {e}")))
}

fn int_of(value: &Value) -> Result<i64, Error> {
    match value {
        Value::Int(n) => Ok(*n),
        other => Err(unexpected("an integer", other)),
    }
}

/// The members of a set or range reply.
fn members_of(value: Value) -> Result<Vec<String>, Error> {
    match value {
        Value::Nil => Ok(Vec::new()),
        Value::Array(items) | Value::Set(items) => items.into_iter().map(text).collect(),
        other => Err(unexpected("a list of members", &other)),
    }
}

/// The fields of an `HGETALL` reply (a map in RESP3, pairs in RESP2).
fn fields_of(value: Value) -> Result<HashMap<String, String>, Error> {
    match value {
        Value::Nil => Ok(HashMap::new()),
        Value::Map(entries) => entries.into_iter().map(|(k, v)| Ok((text(k)?, text(v)?))).collect(),
        Value::Array(items) => {
            let mut out = HashMap::with_capacity(items.len() / 2);
            let mut items = items.into_iter();
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                out.insert(text(k)?, text(v)?);
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
    fn keys_carry_the_shard_hash_tag() {
        assert_eq!(shard_base("hookd", 3), "hookd:h:{3}:");
        assert_eq!(summary_key("hookd", 3, "dlv_1"), "hookd:h:{3}:d:dlv_1");
        assert_eq!(attempts_key("hookd", 3, "dlv_1"), "hookd:h:{3}:a:dlv_1");
        assert_eq!(index_key("hookd", 3, "time"), "hookd:h:{3}:time");
        assert_eq!(event_key("hookd", 3, "evt_1"), "hookd:h:{3}:event:evt_1");
        assert_eq!(stats_key("hookd", 3, "crm"), "hookd:h:{3}:stats:crm");
        assert_eq!(event_record_key("hookd", 3, "evt_1"), "hookd:h:{3}:e:evt_1");
        assert_eq!(event_times_key("hookd", 3), "hookd:h:{3}:events");
        let minute = 1_700_000_040_000; // minute number 28,333,334
        assert_eq!(activity_shard(minute, 8), 6);
        assert_eq!(activity_key("hookd", 8, minute, None), "hookd:h:{6}:m:1700000040000");
        assert_eq!(
            activity_key("hookd", 8, minute, Some("acme")),
            "hookd:h:{6}:m:1700000040000:acme"
        );
        assert_eq!(
            activity_shard(minute + activity::MINUTE_MS, 8),
            7,
            "the next minute, the next shard"
        );
        assert_eq!(activity_shard(minute, 1), 0);
    }

    #[test]
    fn activity_fields_read_back() {
        let mut record = MinuteRecord::default();
        record.counts.succeeded = 3;
        record.counts.latency[0] = 1;
        record.counts.latency[LATENCY_BUCKETS - 1] = 2;
        record.tenants.insert(TenantId::parse("acme").unwrap(), 3);
        let fields = activity_fields(&record);
        let names: Vec<&str> = fields.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(names, ["s", "l0", "l14", "t:acme"], "only the fields it changes");
        let back = fields.into_iter().map(|(f, n)| (f, n.to_string())).collect();
        assert_eq!(activity_from("k", back).unwrap(), record);
        let bad = HashMap::from([("s".to_owned(), "x".to_owned())]);
        assert!(matches!(activity_from("k", bad), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn runs_are_bounded_by_entries_and_body_bytes() {
        let event = |bytes: usize| {
            Entry::Event(EventRecord {
                id: EventId::parse("evt_1").unwrap(),
                event_type: "a.b".into(),
                created_at: 0,
                body: bytes::Bytes::from(vec![0u8; bytes]),
                tenant: None,
            })
        };
        let sizes = |entries: &[Entry]| {
            let refs: Vec<&Entry> = entries.iter().collect();
            runs_of(&refs).map(<[&Entry]>::len).collect::<Vec<_>>()
        };
        let small: Vec<Entry> = (0..ENTRIES_PER_RUN + 3).map(|_| event(1)).collect();
        assert_eq!(sizes(&small), vec![ENTRIES_PER_RUN, 3]);
        let big = vec![
            event(BODY_BYTES_PER_RUN + 1),
            event(BODY_BYTES_PER_RUN / 2),
            event(BODY_BYTES_PER_RUN / 2),
        ];
        assert_eq!(sizes(&big), vec![1, 2], "an oversized entry still runs, alone");
        assert!(sizes(&[]).is_empty());
    }

    #[test]
    fn the_scripts_derive_keys_from_the_time_index() {
        // Both scripts strip the 4 bytes of `time` to get the shard's base.
        assert_eq!(
            index_key("p", 0, "time").strip_suffix("time"),
            Some(shard_base("p", 0).as_str())
        );
        assert!(RECORD_LUA.contains(&format!("local S = {STRIDE}")));
    }
}
