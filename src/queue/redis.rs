//! Redis backend: sorted sets scored by due time, one hash tag per shard.
//!
//! Every key of shard `N` carries the hash tag `{N}`, so all of a shard's
//! keys live in one Redis Cluster slot and a Lua script may touch them
//! together. Each operation is one Lua script per shard: on a single Redis
//! the shards of one call go to one script run (one round trip, since any
//! key may be touched there); on a cluster each shard's script runs on the
//! node owning its slot, all shards concurrently.
//!
//! A delivery's due time is its score in `due`; a claim pushes it to the end
//! of the lease, and that score is the claim's [`Lease`] token: settlements
//! apply only while `ZSCORE due id` still equals it. Claims take the lowest
//! scores over all shards, ties broken by id (as the embedded store does).
//!
//! A parked delivery leaves `due` for its shard's `parked:<subscription>`
//! set. The settle script finds the subscription in the delivery's record
//! and derives that key itself (it cannot be declared, the caller does not
//! know it); it carries the shard's hash tag, so it is in the slot of the
//! declared keys, which a cluster allows.
//!
//! ## Whose clock
//!
//! Leases and due times follow Redis's clock (`TIME`, read inside each
//! script), never a process's: a process whose clock runs ahead would
//! otherwise take deliveries still leased to another, and one behind would
//! see nothing due. A caller still passes times in its own clock (`now`,
//! a retry's due time, a cutoff) together with its clock's reading
//! ([`RedisQueue::wall`]); the script moves each by the difference between
//! the two clocks (`shift`), so a time meant as "now plus a second" stays
//! that on Redis, and tests may still pass a later `now` to let leases run
//! out. Clocks within [`CLOCK_TOLERANCE_MS`] of Redis's are taken as
//! agreeing (no shift), so a well-synchronised process's times are kept
//! to the ms whatever a call's transit time; a clock off by less than that
//! can end a lease at most that much early (leases are at least a second,
//! and more than twice the longest attempt). What the store keeps is in
//! Redis's time: [`Lease`] tokens, the times in a [`Standing`], and death
//! times; [`Queue::depth`] counts what is due by Redis's clock too. On a cluster each shard uses
//! the clock of the node holding it, so leases within a shard always
//! compare against one clock.
//!
//! Subscription state lives outside the shards, under the fixed hash tag
//! `{s}` ([`STATE_TAG`]): every subscription's hash and their index are in
//! one slot, so [`StateStore::record_health`] is one script run even on a
//! cluster. They are few and small.

use std::sync::LazyLock;
use std::time::Duration;

use ::redis::{Script, Value};

use super::{
    Claim, Claimed, DeadScope, Delivery, DeliveryId, Depth, Enqueued, Error, Expired, HealthUpdate, Lease, Millis,
    NewEvent, Queue, Settlement, Standing, StateStore, SubscriptionState,
};
use crate::config::{QueueConfig, SubscriptionName};
use crate::model::TenantId;

pub(crate) mod link;

use link::{Call, Failed, Redis};

/// `{prefix}:{N}:due`, a sorted set: member = delivery id, score = due time
/// in ms (the lease's end while claimed). Written by enqueue (due now),
/// claim (lease end), settle (retry/defer re-score, ack/dead/park remove),
/// replay (due now) and unpark (due at `created_at`).
pub fn due_key(prefix: &str, shard: u16) -> String {
    format!("{prefix}:{{{shard}}}:due")
}

/// `{prefix}:{N}:records`, a hash: delivery id → [`Delivery::encode`] JSON,
/// for every delivery in `due`, `dead` or a `parked` set. Written by
/// enqueue, settle (retry/dead store the updated record, ack deletes it)
/// and replay.
pub fn records_key(prefix: &str, shard: u16) -> String {
    format!("{prefix}:{{{shard}}}:records")
}

/// `{prefix}:{N}:dead`, a sorted set: member = delivery id, score = when it
/// died in ms. Written by settle (dead) and replay (removes).
pub fn dead_key(prefix: &str, shard: u16) -> String {
    format!("{prefix}:{{{shard}}}:dead")
}

/// `{prefix}:{N}:seen:<dedup key>`, a string with a TTL of the dedup
/// window: the event (or the replay, whose key is `<event id>/replay/<key>`)
/// was accepted within the window. `N` is the event's shard. Written by
/// enqueue only; Redis expires it.
pub fn seen_key(prefix: &str, shard: u16, dedup_key: &str) -> String {
    format!("{prefix}:{{{shard}}}:seen:{dedup_key}")
}

/// `{prefix}:{N}:parked:<subscription>`, a sorted set: member = delivery id,
/// score = its `created_at` in ms (ties by id), the parked deliveries of one
/// subscription in this shard. Written by settle (park; the script builds
/// the key from `parked_key_base` and the record's subscription) and
/// unpark (moves them back to `due`).
pub fn parked_key(prefix: &str, shard: u16, subscription: &SubscriptionName) -> String {
    format!("{}{subscription}", parked_key_base(prefix, shard))
}

/// `{prefix}:{N}:parked:`, what [`parked_key`] appends a subscription to.
fn parked_key_base(prefix: &str, shard: u16) -> String {
    format!("{prefix}:{{{shard}}}:parked:")
}

/// `{prefix}:{N}:parked_at`, a hash: delivery id → when it was parked (ms),
/// for every delivery in one of the shard's `parked` sets (its count is the
/// shard's parked depth). Written by settle (park) and unpark (removes).
pub fn parked_at_key(prefix: &str, shard: u16) -> String {
    format!("{prefix}:{{{shard}}}:parked_at")
}

/// `{prefix}:{N}:dead_by:<scope>`, a sorted set: member = delivery id,
/// score = when it died in ms, the shard's dead deliveries under one
/// [`DeadScope`] (`sub:<subscription>`, `owner:<tenant>`). Written by
/// settle (dead; the caller names the keys), replay (removes; the caller
/// names them) and expire dead (removes; the script builds them from
/// [`dead_by_key_base`], the record's subscription and its `owner`).
pub fn dead_by_key(prefix: &str, shard: u16, scope: &DeadScope) -> String {
    format!("{}{}", dead_by_key_base(prefix, shard), scope.key())
}

/// `{prefix}:{N}:dead_by_filed`, a string: set once every dead delivery
/// the shard held when indexes came in is filed in [`dead_by_key`]s.
/// Written by [`RedisQueue::connect`].
pub fn dead_by_filed_key(prefix: &str, shard: u16) -> String {
    format!("{prefix}:{{{shard}}}:dead_by_filed")
}

/// `{prefix}:{N}:dead_by:`, what [`dead_by_key`] appends a scope to.
fn dead_by_key_base(prefix: &str, shard: u16) -> String {
    format!("{prefix}:{{{shard}}}:dead_by:")
}

/// `{prefix}:{N}:owner`, a hash: delivery id → the tenant owning its
/// subscription ([`Delivery::owner`]), for every such delivery in
/// `records` (due, parked or dead). Written by enqueue, settle (ack
/// removes) and expire dead (removes).
pub fn owner_key(prefix: &str, shard: u16) -> String {
    format!("{prefix}:{{{shard}}}:owner")
}

/// `{prefix}:{N}:pending`, a hash: tenant → how many of its deliveries are
/// in this shard's `due` or `parked` sets (waiting, retrying or parked; not
/// dead), summed over the shards for `plans.max_pending`. A tenant whose
/// count falls to zero is removed. Written by enqueue (+), settle (ack and
/// dead −) and replay (+), in the same script as the move it counts.
pub fn pending_key(prefix: &str, shard: u16) -> String {
    format!("{prefix}:{{{shard}}}:pending")
}

/// The hash tag of every subscription state key: one fixed slot.
pub const STATE_TAG: &str = "s";

/// `{prefix}:{s}:sub:<subscription>`, a hash: the [`SubscriptionState`]
/// fields `enabled` (`1`/`0`), `reason`, `since`, `consecutive_failures`,
/// `failing_since`, `last_success_at`, `last_failure_at` (times in ms; an
/// absent field is `None`, or the default). Written by set_enabled and
/// record_health.
pub fn subscription_key(prefix: &str, subscription: &SubscriptionName) -> String {
    format!("{prefix}:{{{STATE_TAG}}}:sub:{subscription}")
}

/// `{prefix}:{s}:rate:<subscription>`, a string: the theoretical arrival
/// time (ms, fractional) of the subscription's rate-limit bucket
/// ([`super::rate`]), expiring once the bucket is full again. Written by
/// take_tokens.
pub fn rate_key(prefix: &str, subscription: &SubscriptionName) -> String {
    format!("{prefix}:{{{STATE_TAG}}}:rate:{subscription}")
}

/// `{prefix}:{s}:subscriptions`, a set: the name of every subscription that
/// has a state hash. Written by set_enabled and record_health.
pub fn subscriptions_key(prefix: &str) -> String {
    format!("{prefix}:{{{STATE_TAG}}}:subscriptions")
}

/// Most parked deliveries one unpark script run moves, so Redis is never
/// busy with one for long.
const UNPARK_BATCH: u64 = 1000;

/// Clocks within this many ms of Redis's are taken as agreeing with it
/// (see [`CLOCK_LUA`]).
pub const CLOCK_TOLERANCE_MS: Millis = 500;

/// What every script that reads time starts with. `shift(wall)` is how far
/// Redis's clock (`TIME`) is ahead of the caller's, whose reading is
/// `wall`: zero when they are within [`CLOCK_TOLERANCE_MS`], so that the
/// time a call takes to reach Redis does not move the times of a caller
/// whose clock is right (a retry due in 5 s stays due at exactly that
/// ms). `ms(x)` writes a time as a whole number (a score or field Lua
/// would otherwise print in exponent form). Scripts that write after
/// reading `TIME` replicate their effects (the default from Redis 7; asked
/// for on Redis 5 and 6).
const CLOCK_LUA: &str = r#"
redis.replicate_commands()
local function shift(wall)
  local t = redis.call('TIME')
  local d = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(wall)
  if math.abs(d) < 500 then return 0 end
  return d
end
local function ms(x) return string.format('%.0f', x) end
"#;

/// Enqueue. KEYS: `due`, `records`, `owner`, `pending` per shard group,
/// then one `seen` key per event. ARGV: window ms, the caller's clock ms,
/// then per event: group number, index of its `seen` key in KEYS, delivery
/// count, and (id, record, owning tenant or empty) triples. Deliveries are
/// due now (in Redis's clock); each owned one is counted in `pending`.
/// Returns 1 (accepted) or 0 (duplicate) per event, in ARGV order.
const ENQUEUE_LUA: &str = r#"
local window, now = ARGV[1], ms(tonumber(ARGV[2]) + shift(ARGV[2]))
local out, groups = {}, {}
local i = 3
while i <= #ARGV do
  local g, seen, n = tonumber(ARGV[i]), KEYS[tonumber(ARGV[i + 1])], tonumber(ARGV[i + 2])
  i = i + 3
  if redis.call('SET', seen, '1', 'NX', 'PX', window) then
    local adds = groups[g]
    if adds == nil then
      adds = {records = {}, scores = {}, owners = {}, counts = {}}
      groups[g] = adds
    end
    for j = i, i + 3 * n - 1, 3 do
      table.insert(adds.records, ARGV[j])
      table.insert(adds.records, ARGV[j + 1])
      table.insert(adds.scores, now)
      table.insert(adds.scores, ARGV[j])
      local t = ARGV[j + 2]
      if t ~= '' then
        table.insert(adds.owners, ARGV[j])
        table.insert(adds.owners, t)
        adds.counts[t] = (adds.counts[t] or 0) + 1
      end
    end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
  i = i + 3 * n
end
-- The accepted deliveries of each shard group: one HSET and one ZADD per
-- 500 of them, their owners, and one HINCRBY per owning tenant.
for g, adds in pairs(groups) do
  for from = 1, #adds.records, 1000 do
    local to = math.min(from + 999, #adds.records)
    redis.call('HSET', KEYS[4 * g - 2], unpack(adds.records, from, to))
    redis.call('ZADD', KEYS[4 * g - 3], unpack(adds.scores, from, to))
  end
  for from = 1, #adds.owners, 1000 do
    redis.call('HSET', KEYS[4 * g - 1], unpack(adds.owners, from, math.min(from + 999, #adds.owners)))
  end
  for t, n in pairs(adds.counts) do
    redis.call('HINCRBY', KEYS[4 * g], t, n)
  end
end
return out
"#;

/// Claim. KEYS: `due`, `records` per shard. ARGV: the caller's now ms, the
/// caller's clock ms, lease ms, max. Takes the `max` oldest due deliveries
/// at now (moved to Redis's clock) over all shards given (ties by id,
/// compared bytewise whatever the server's locale), re-scores them to the
/// lease end (that now plus the lease) and returns `{next_due, lease end,
/// id, record, old score, ...}` oldest first; `next_due` is the lowest
/// score left, in the caller's clock, when nothing was claimed (nil
/// otherwise or if empty). Ids whose record is missing are dropped from
/// `due`.
const CLAIM_LUA: &str = r#"
local function before(a, b)
  for k = 1, math.min(#a, #b) do
    local x, y = string.byte(a, k), string.byte(b, k)
    if x ~= y then return x < y end
  end
  return #a < #b
end
local shift = shift(ARGV[2])
local now = ms(tonumber(ARGV[1]) + shift)
local lease_end, max = ms(tonumber(now) + tonumber(ARGV[3])), tonumber(ARGV[4])
local shards = #KEYS / 2
local found, pos, picked = {}, {}, {}
for s = 1, shards do
  found[s] = redis.call('ZRANGEBYSCORE', KEYS[2 * s - 1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, max)
  pos[s] = 1
  picked[s] = {}
end
local order = {}
while #order < max do
  local best, best_score, best_id = nil, nil, nil
  for s = 1, shards do
    local p = pos[s]
    if p < #found[s] then
      local score, id = tonumber(found[s][p + 1]), found[s][p]
      if best == nil or score < best_score or (score == best_score and before(id, best_id)) then
        best, best_score, best_id = s, score, id
      end
    end
  end
  if best == nil then break end
  local p = pos[best]
  local id = found[best][p]
  pos[best] = p + 2
  picked[best][#picked[best] + 1] = id
  order[#order + 1] = {id, found[best][p + 1]}
end
local records = {}
for s = 1, shards do
  local ids, due, rec = picked[s], KEYS[2 * s - 1], KEYS[2 * s]
  for first = 1, #ids, 1000 do
    local zargs, hargs = {}, {}
    for i = first, math.min(first + 999, #ids) do
      zargs[#zargs + 1] = lease_end
      zargs[#zargs + 1] = ids[i]
      hargs[#hargs + 1] = ids[i]
    end
    redis.call('ZADD', due, unpack(zargs))
    local got = redis.call('HMGET', rec, unpack(hargs))
    for i = 1, #hargs do
      if got[i] then
        records[hargs[i]] = got[i]
      else
        redis.call('ZREM', due, hargs[i])
      end
    end
  end
end
local out = {false, lease_end}
for _, o in ipairs(order) do
  local r = records[o[1]]
  if r then
    out[#out + 1] = o[1]
    out[#out + 1] = r
    out[#out + 1] = o[2]
  end
end
if #out == 2 then
  for s = 1, shards do
    local head = redis.call('ZRANGE', KEYS[2 * s - 1], 0, 0, 'WITHSCORES')
    if head[2] then
      local score = tonumber(head[2]) - shift
      if out[1] == false or score < out[1] then out[1] = score end
    end
  end
  if out[1] then out[1] = ms(out[1]) end
end
return out
"#;

/// Peek, on a cluster before claiming. KEYS: one shard's `due`. ARGV: the
/// caller's now ms and clock ms, max. Returns `{{id, score, ...}, head}`:
/// up to `max` due deliveries with their scores (in Redis's clock), oldest
/// first, and the lowest score in the caller's clock (nil if empty).
const PEEK_LUA: &str = r#"
local shift = shift(ARGV[2])
local found = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ms(tonumber(ARGV[1]) + shift), 'WITHSCORES', 'LIMIT', 0, ARGV[3])
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if head[2] then return {found, ms(tonumber(head[2]) - shift)} end
return {found, false}
"#;

/// Depth. KEYS: `due`, `dead`, `parked_at` per shard. ARGV: the caller's
/// now ms and clock ms. Returns {due at now (in Redis's clock), all in
/// `due`, dead, parked}, summed over the shards given.
const DEPTH_LUA: &str = r#"
local now = ms(tonumber(ARGV[1]) + shift(ARGV[2]))
local out = {0, 0, 0, 0}
for s = 1, #KEYS / 3 do
  out[1] = out[1] + redis.call('ZCOUNT', KEYS[3 * s - 2], '-inf', now)
  out[2] = out[2] + redis.call('ZCARD', KEYS[3 * s - 2])
  out[3] = out[3] + redis.call('ZCARD', KEYS[3 * s - 1])
  out[4] = out[4] + redis.call('HLEN', KEYS[3 * s])
end
return out
"#;

/// Settle. KEYS: `due`, `records`, `dead`, `parked_at`, `owner`, `pending`
/// per shard group.
/// ARGV: the caller's clock ms, then six fields per settlement: kind, group
/// number, id, lease token, new due ms in the caller's clock (for park: the
/// shard's [`parked_key_base`]; for dead: its [`dead_by_key`]s, one per
/// line), new record (unused fields empty). Deaths
/// and parks are stamped with now in Redis's clock. A settlement applies only while the
/// delivery's score still equals its lease token; a delivery acknowledged
/// earlier in the same call is gone for the settlements after it. A park reads the record
/// for the subscription and `created_at`; one whose record is missing or
/// undecodable is not applied (left leased, it falls due again). An ack or
/// a death takes the delivery out of its owner's `pending` count; an ack
/// forgets its owner too (a dead one keeps it for a replay). Returns how
/// many applied.
const SETTLE_LUA: &str = r#"
-- Takes `n` from tenant `t`'s count in `pending`, removing it at zero.
local function release(pending, t, n)
  if redis.call('HINCRBY', pending, t, -n) <= 0 then redis.call('HDEL', pending, t) end
end
-- Redis's clock is read only if a settlement needs it (acks do not).
local offset = nil
local function shifted()
  if offset == nil then offset = shift(ARGV[1]) end
  return offset
end
local applied = 0
-- Acks are removed together, one ZREM and one HDEL per shard group.
local gone, acked = {}, {}
for i = 2, #ARGV, 6 do
  local kind, g, id, lease = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], tonumber(ARGV[i + 3])
  local due, rec, dead, parked_at = KEYS[6 * g - 5], KEYS[6 * g - 4], KEYS[6 * g - 3], KEYS[6 * g - 2]
  local score = nil
  if not gone[id] then score = redis.call('ZSCORE', due, id) end
  if score and tonumber(score) == lease then
    if kind == 'ack' then
      gone[id] = true
      acked[g] = acked[g] or {}
      table.insert(acked[g], id)
      applied = applied + 1
    elseif kind == 'retry' then
      redis.call('HSET', rec, id, ARGV[i + 5])
      redis.call('ZADD', due, ms(tonumber(ARGV[i + 4]) + shifted()), id)
      applied = applied + 1
    elseif kind == 'defer' then
      redis.call('ZADD', due, ms(tonumber(ARGV[i + 4]) + shifted()), id)
      applied = applied + 1
    elseif kind == 'dead' then
      redis.call('ZREM', due, id)
      redis.call('HSET', rec, id, ARGV[i + 5])
      local at = ms(tonumber(ARGV[1]) + shifted())
      redis.call('ZADD', dead, at, id)
      for key in string.gmatch(ARGV[i + 4], '[^\n]+') do redis.call('ZADD', key, at, id) end
      local t = redis.call('HGET', KEYS[6 * g - 1], id)
      if t then release(KEYS[6 * g], t, 1) end
      applied = applied + 1
    elseif kind == 'park' then
      local ok, d = pcall(cjson.decode, redis.call('HGET', rec, id) or '')
      if ok and type(d) == 'table' and type(d.created_at) == 'number'
          and type(d.subscription) == 'string' and string.find(d.subscription, '^[%w%-_%.]+$') then
        redis.call('ZREM', due, id)
        redis.call('ZADD', ARGV[i + 4] .. d.subscription, string.format('%.0f', d.created_at), id)
        redis.call('HSET', parked_at, id, ms(tonumber(ARGV[1]) + shifted()))
        applied = applied + 1
      end
    end
  end
end
for g, ids in pairs(acked) do
  for from = 1, #ids, 1000 do
    local part = {unpack(ids, from, math.min(from + 999, #ids))}
    redis.call('ZREM', KEYS[6 * g - 5], unpack(part))
    redis.call('HDEL', KEYS[6 * g - 4], unpack(part))
    local owners, counts = redis.call('HMGET', KEYS[6 * g - 1], unpack(part)), {}
    for _, t in ipairs(owners) do
      if t then counts[t] = (counts[t] or 0) + 1 end
    end
    for t, n in pairs(counts) do release(KEYS[6 * g], t, n) end
    redis.call('HDEL', KEYS[6 * g - 1], unpack(part))
  end
end
return applied
"#;

/// Unpark. KEYS: `parked:<subscription>`, `due`, `parked_at` per shard.
/// ARGV: the caller's now ms, the caller's clock ms, most to move. Moves the lowest-scored parked deliveries,
/// shard after shard, back to `due` scored by their `created_at` (at most
/// now), until that many moved. Returns how many moved: fewer than asked
/// means every shard given is empty.
const UNPARK_LUA: &str = r#"
local now = tonumber(ARGV[1]) + shift(ARGV[2])
local budget = tonumber(ARGV[3])
local moved = 0
for s = 1, #KEYS / 3 do
  if budget <= 0 then break end
  local parked, due, parked_at = KEYS[3 * s - 2], KEYS[3 * s - 1], KEYS[3 * s]
  local items = redis.call('ZRANGE', parked, 0, budget - 1, 'WITHSCORES')
  if #items > 0 then
    local zargs, ids = {}, {}
    for j = 1, #items, 2 do
      if tonumber(items[j + 1]) > now then
        zargs[#zargs + 1] = ms(now)
      else
        zargs[#zargs + 1] = items[j + 1]
      end
      zargs[#zargs + 1] = items[j]
      ids[#ids + 1] = items[j]
    end
    redis.call('ZADD', due, unpack(zargs))
    redis.call('ZREM', parked, unpack(ids))
    redis.call('HDEL', parked_at, unpack(ids))
    moved = moved + #ids
    budget = budget - #ids
  end
end
return moved
"#;

/// Expire dead. KEYS: `dead`, `records`, `owner` per shard. ARGV: cutoff
/// ms, the caller's clock ms (the cutoff is moved to Redis's clock), most
/// to remove, then each shard's [`dead_by_key_base`]. Each removed
/// delivery leaves its scopes' indexes too (its subscription read from
/// the record's `"subscription"` field, the first in it that a string
/// could hold: the id and event type before it never hold a quote). Removes the deliveries that died at or before the cutoff,
/// oldest first, shard after shard, until that many went. Returns
/// {removed, id, record, id, record, …} (a removed id without a record
/// counts, but is not listed).
const EXPIRE_DEAD_LUA: &str = r#"
local cutoff = ms(tonumber(ARGV[1]) + shift(ARGV[2]))
local budget = tonumber(ARGV[3])
local out = {0}
for s = 1, #KEYS / 3 do
  if budget <= 0 then break end
  local dead, rec, owner = KEYS[3 * s - 2], KEYS[3 * s - 1], KEYS[3 * s]
  local base = ARGV[3 + s]
  local ids = redis.call('ZRANGEBYSCORE', dead, '-inf', cutoff, 'LIMIT', 0, budget)
  if #ids > 0 then
    for _, id in ipairs(ids) do
      local record = redis.call('HGET', rec, id)
      if record then
        out[#out + 1] = id
        out[#out + 1] = record
        local sub = string.match(record, '"subscription":"([^"]+)"')
        if sub then redis.call('ZREM', base .. 'sub:' .. sub, id) end
      end
      local t = redis.call('HGET', owner, id)
      if t then redis.call('ZREM', base .. 'owner:' .. t, id) end
    end
    redis.call('ZREM', dead, unpack(ids))
    redis.call('HDEL', rec, unpack(ids))
    redis.call('HDEL', owner, unpack(ids))
    out[1] = out[1] + #ids
    budget = budget - #ids
  end
end
return out
"#;

/// File dead deliveries by scope, for a shard written before the
/// indexes. KEYS: `dead`, `records`, [`dead_by_filed_key`] of one shard.
/// ARGV: its [`dead_by_key_base`], the rank to start at, how many. Files
/// that many dead deliveries (the subscription and owner read from the
/// decoded record) and, past the last, sets the marker. Returns how many
/// it read, or -1 when done.
const FILE_DEAD_LUA: &str = r#"
local from, n = tonumber(ARGV[2]), tonumber(ARGV[3])
local items = redis.call('ZRANGE', KEYS[1], from, from + n - 1, 'WITHSCORES')
for j = 1, #items, 2 do
  local id, at = items[j], items[j + 1]
  local ok, d = pcall(cjson.decode, redis.call('HGET', KEYS[2], id) or '')
  if ok and type(d) == 'table' and type(d.subscription) == 'string' then
    redis.call('ZADD', ARGV[1] .. 'sub:' .. d.subscription, at, id)
    if string.sub(d.subscription, 1, 4) == 'sub_' and type(d.tenant) == 'string' then
      redis.call('ZADD', ARGV[1] .. 'owner:' .. d.tenant, at, id)
    end
  end
end
if #items < 2 * n then
  redis.call('SET', KEYS[3], '1')
  return -1
end
return #items / 2
"#;

/// Set enabled. KEYS: the subscription's state hash, the index set. ARGV:
/// `1`/`0` (enable/disable), name, now ms, `1` if a reason follows, the
/// reason. Mirrors [`SubscriptionState::set_enabled`]. Returns 1 if the
/// state changed.
const SET_ENABLED_LUA: &str = r#"
local key = KEYS[1]
if (redis.call('HGET', key, 'enabled') or '1') == ARGV[1] then return 0 end
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('HSET', key, 'enabled', ARGV[1], 'since', ARGV[3])
if ARGV[4] == '1' then
  redis.call('HSET', key, 'reason', ARGV[5])
else
  redis.call('HDEL', key, 'reason')
end
if ARGV[1] == '1' then
  redis.call('HSET', key, 'consecutive_failures', '0')
  redis.call('HDEL', key, 'failing_since')
else
  redis.call('HSETNX', key, 'consecutive_failures', '0')
end
return 1
"#;

/// Record health. KEYS: the index set, then one state hash per update.
/// ARGV: six fields per update: name, successes, failures, `1` if the last
/// outcome was a success, last success ms, last failure ms (empty if
/// none). Mirrors [`SubscriptionState::apply`], update after update.
/// Returns each update's resulting hash (as HGETALL lists it), in order.
/// Reads each hash once and writes only the fields that change (one HSET,
/// and an HDEL when a failure streak ends): a healthy subscription's
/// update is an HGETALL and one HSET of its last success.
const RECORD_HEALTH_LUA: &str = r#"
local out = {}
for u = 1, #KEYS - 1 do
  local key, i = KEYS[u + 1], 6 * u - 5
  local successes, failures = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local last_failure = ARGV[i + 5]
  local flat = redis.call('HGETALL', key)
  local h = {}
  for j = 1, #flat, 2 do h[flat[j]] = flat[j + 1] end
  local set = {}
  local function put(field, value)
    if h[field] ~= value then
      h[field] = value
      set[#set + 1] = field
      set[#set + 1] = value
    end
  end
  if #flat == 0 then redis.call('SADD', KEYS[1], ARGV[i]) end
  if h.enabled == nil then put('enabled', '1') end
  if h.since == nil then put('since', '0') end
  if h.consecutive_failures == nil then put('consecutive_failures', '0') end
  local streak_over = false
  if ARGV[i + 3] == '1' then
    put('consecutive_failures', '0')
    if h.failing_since ~= nil then
      h.failing_since = nil
      streak_over = true
    end
  elseif failures > 0 then
    if successes > 0 then
      put('consecutive_failures', ARGV[i + 2])
      put('failing_since', last_failure)
    else
      put('consecutive_failures', string.format('%.0f', (tonumber(h.consecutive_failures) or 0) + failures))
      if h.failing_since == nil then put('failing_since', last_failure) end
    end
  end
  local function later(field, at)
    if at ~= '' and (h[field] == nil or tonumber(h[field]) < tonumber(at)) then put(field, at) end
  end
  later('last_success_at', ARGV[i + 4])
  later('last_failure_at', last_failure)
  if #set > 0 then redis.call('HSET', key, unpack(set)) end
  if streak_over then redis.call('HDEL', key, 'failing_since') end
  local state = {}
  for field, value in pairs(h) do
    state[#state + 1] = field
    state[#state + 1] = value
  end
  out[#out + 1] = state
end
return out
"#;

/// Replay. KEYS: `dead`, `due`, `records`, `owner`, `pending` of one
/// shard, then the delivery's [`dead_by_key`]s. ARGV: id, the dead score the caller read, the reset record, the
/// caller's now ms, the caller's clock ms. Moves the delivery back to `due`
/// (due at now, moved to Redis's clock) if it is still dead since that
/// time, counting it in its owner's `pending` again. Returns 1 if moved.
const REPLAY_LUA: &str = r#"
local at = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not at or tonumber(at) ~= tonumber(ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[2], ms(tonumber(ARGV[4]) + shift(ARGV[5])), ARGV[1])
local t = redis.call('HGET', KEYS[4], ARGV[1])
if t then redis.call('HINCRBY', KEYS[5], t, 1) end
for k = 6, #KEYS do redis.call('ZREM', KEYS[k], ARGV[1]) end
return 1
"#;

/// Reschedule. KEYS: `due` of one shard. ARGV: id, the due time the caller
/// expects it to have (its lease token, in Redis's clock), the new due time
/// and the caller's clock ms. Returns 1 if it still had that due time and
/// moved.
const RESCHEDULE_LUA: &str = r#"
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not due or tonumber(due) ~= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ms(tonumber(ARGV[3]) + shift(ARGV[4])), ARGV[1])
return 1
"#;

/// Take tokens. KEYS: the subscription's [`rate_key`]. ARGV: emission
/// interval ms, tolerance ms (`(burst - 1) * interval`), tokens wanted, the
/// caller's now ms and clock ms. Mirrors [`super::rate::take`] in Redis's
/// clock. Returns {granted, next token at (in the caller's clock) or -1}.
const TAKE_TOKENS_LUA: &str = r#"
local shift = shift(ARGV[5])
local interval, tolerance, want, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]) + shift
local tat = tonumber(redis.call('GET', KEYS[1]) or '') or now
if tat < now then tat = now end
local granted = 0
while granted < want and tat - now <= tolerance do
  tat = tat + interval
  granted = granted + 1
end
redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil(tat - now) + 1000)
local next_at = -1
if granted < want then next_at = math.ceil(tat - tolerance - shift) end
return {granted, next_at}
"#;

static ENQUEUE: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{CLOCK_LUA}{ENQUEUE_LUA}")));
static CLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{CLOCK_LUA}{CLAIM_LUA}")));
static PEEK: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{CLOCK_LUA}{PEEK_LUA}")));
static DEPTH: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{CLOCK_LUA}{DEPTH_LUA}")));
static SETTLE: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{CLOCK_LUA}{SETTLE_LUA}")));
static REPLAY: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{CLOCK_LUA}{REPLAY_LUA}")));
static RESCHEDULE: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{CLOCK_LUA}{RESCHEDULE_LUA}")));
static TAKE_TOKENS: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{CLOCK_LUA}{TAKE_TOKENS_LUA}")));
static UNPARK: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{CLOCK_LUA}{UNPARK_LUA}")));
static EXPIRE_DEAD: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{CLOCK_LUA}{EXPIRE_DEAD_LUA}")));
static FILE_DEAD: LazyLock<Script> = LazyLock::new(|| Script::new(FILE_DEAD_LUA));
static SET_ENABLED: LazyLock<Script> = LazyLock::new(|| Script::new(SET_ENABLED_LUA));
static RECORD_HEALTH: LazyLock<Script> = LazyLock::new(|| Script::new(RECORD_HEALTH_LUA));

/// The Redis queue backend.
pub struct RedisQueue {
    /// Connections to Redis.
    redis: Redis,
    /// Prefix of every key (`queue.key_prefix`).
    prefix: String,
    /// Number of shards (`queue.shards`).
    shards: u16,
    /// Replicas that must acknowledge an enqueue (`queue.redis_wait_replicas`).
    wait_replicas: u32,
    /// How long an enqueue waits for them (`queue.redis_wait_timeout`).
    wait_timeout: Duration,
    /// How far this process's clock is taken to be off (ms): zero, except
    /// in tests of clock skew ([`RedisQueue::with_clock_skew`]).
    skew: Millis,
}

impl From<Failed> for Error {
    fn from(failed: Failed) -> Error {
        Error::Redis(failed.0)
    }
}

/// Milliseconds of a duration, saturating.
fn millis(d: Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}

impl RedisQueue {
    /// Connects to `config.redis_url` (a cluster seed if `config.cluster`)
    /// and checks that Redis answers.
    pub async fn connect(config: &QueueConfig) -> Result<RedisQueue, Error> {
        let url = config
            .redis_url
            .as_ref()
            .ok_or_else(|| Error::Invalid("queue.redis_url is not set; the Redis backend needs it".into()))?
            .expose();
        let queue = RedisQueue {
            redis: Redis::connect(url, config).await?,
            prefix: config.key_prefix.clone(),
            shards: config.shards.max(1),
            wait_replicas: config.redis_wait_replicas,
            wait_timeout: config.redis_wait_timeout,
            skew: 0,
        };
        queue.file_unfiled_dead().await?;
        Ok(queue)
    }

    /// Files the dead deliveries of every shard not yet marked
    /// [`dead_by_filed_key`] under their scopes, in batches (a store
    /// written before the indexes; every delivery that dies later is filed
    /// as it dies). Idempotent, so processes starting together may both
    /// run it.
    async fn file_unfiled_dead(&self) -> Result<(), Error> {
        const BATCH: u64 = 500;
        let mut marks = Vec::new();
        for s in 0..self.shards {
            let mut cmd = ::redis::cmd("EXISTS");
            cmd.arg(dead_by_filed_key(&self.prefix, s));
            marks.push(vec![cmd]);
        }
        let marks = self.redis.per_shard("dead index", marks).await?;
        for (s, mark) in (0..self.shards).zip(marks) {
            if mark.first().map(int_of).transpose()? == Some(1) {
                continue;
            }
            let mut from = 0u64;
            loop {
                let mut call = Call {
                    keys: vec![
                        dead_key(&self.prefix, s),
                        records_key(&self.prefix, s),
                        dead_by_filed_key(&self.prefix, s),
                    ],
                    args: Vec::new(),
                };
                call.arg(dead_by_key_base(&self.prefix, s));
                call.arg(from);
                call.arg(BATCH);
                let read = self.redis.eval("dead index", &FILE_DEAD, vec![call]).await?;
                match read.first().map(int_of).transpose()? {
                    Some(n) if n > 0 => from += n as u64,
                    _ => break,
                }
            }
            if from > 0 {
                tracing::info!(
                    shard = s,
                    dead = from,
                    "filed the dead deliveries of an older store by subscription and owner"
                );
            }
        }
        Ok(())
    }

    /// This queue, reading this process's clock as `skew` ms off (ahead if
    /// positive), as a process whose clock is wrong would: for tests that
    /// show leases and due times follow Redis's clock.
    pub fn with_clock_skew(mut self, skew: Millis) -> RedisQueue {
        self.skew = skew;
        self
    }

    /// This process's clock as the scripts are told it.
    fn wall(&self) -> Millis {
        super::now_ms() + self.skew
    }

    fn claim_call(&self, shards: &[u16], now: Millis, lease: Millis, max: usize) -> Call {
        let mut call = Call::default();
        for &s in shards {
            call.keys.push(due_key(&self.prefix, s));
            call.keys.push(records_key(&self.prefix, s));
        }
        call.arg(now);
        call.arg(self.wall());
        call.arg(lease);
        call.arg(max);
        call
    }

    /// On a cluster: peeks at every shard's due heads, picks the `max`
    /// oldest over all shards, then claims that many from each shard.
    async fn claim_cluster(
        &self,
        order: &[u16],
        now: Millis,
        lease: Millis,
        max: usize,
    ) -> Result<(Vec<Claim>, Option<Millis>), Error> {
        let peeks = order
            .iter()
            .map(|&s| {
                let mut call = Call {
                    keys: vec![due_key(&self.prefix, s)],
                    args: Vec::new(),
                };
                call.arg(now);
                call.arg(self.wall());
                call.arg(max);
                call
            })
            .collect();
        let peeked = self.redis.eval("claim", &PEEK, peeks).await?;
        let mut candidates = Vec::new();
        let mut next_due: Option<Millis> = None;
        for (position, reply) in peeked.into_iter().enumerate() {
            let Value::Array(reply) = reply else {
                return Err(unexpected("the peek script's pair", &reply));
            };
            let mut reply = reply.into_iter();
            for (id, score) in pairs(reply.next().unwrap_or(Value::Nil))? {
                candidates.push((score, id, position));
            }
            if let Some(head) = optional_score(reply.next().unwrap_or(Value::Nil))? {
                next_due = Some(next_due.map_or(head, |n| n.min(head)));
            }
        }
        if candidates.is_empty() {
            return Ok((Vec::new(), next_due));
        }
        candidates.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        let mut counts = vec![0usize; order.len()];
        for &(_, _, position) in candidates.iter().take(max) {
            counts[position] += 1;
        }
        let calls: Vec<Call> = counts
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(position, &n)| self.claim_call(&order[position..=position], now, lease, n))
            .collect();
        let replies = self.redis.eval("claim", &CLAIM, calls).await?;
        let mut claimed = Vec::new();
        let mut next_due = None;
        for reply in replies {
            let (items, next) = claim_reply(reply)?;
            claimed.extend(items);
            if let Some(n) = next {
                next_due = Some(next_due.map_or(n, |m: Millis| m.min(n)));
            }
        }
        claimed.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.delivery.id.cmp(&b.0.delivery.id)));
        let claimed: Vec<Claim> = claimed.into_iter().map(|(claim, _)| claim).collect();
        let next_due = if claimed.is_empty() { next_due } else { None };
        Ok((claimed, next_due))
    }

    /// Lists dead ids with their time of death, most recent first, at most
    /// `limit`, from each shard's sorted set `key(shard)` (`dead`, or a
    /// scope's index).
    async fn dead_ids(&self, key: impl Fn(u16) -> String, limit: usize) -> Result<Vec<(String, f64)>, Error> {
        let batches = (0..self.shards)
            .map(|s| {
                let mut cmd = ::redis::cmd("ZREVRANGE");
                cmd.arg(key(s)).arg(0).arg(limit - 1).arg("WITHSCORES");
                vec![cmd]
            })
            .collect();
        let mut all = Vec::new();
        for replies in self.redis.per_shard("dead", batches).await? {
            for reply in replies {
                all.extend(pairs(reply)?);
            }
        }
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
        all.truncate(limit);
        Ok(all)
    }
}

impl RedisQueue {
    /// [`Queue::dead`] over the sorted sets `key(shard)`.
    async fn dead_newest(&self, key: impl Fn(u16) -> String, limit: usize) -> Result<Vec<Delivery>, Error> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let ids = self.dead_ids(key, limit).await?;
        let records = self.records_of(&ids).await?;
        ids.iter()
            .filter_map(|(id, _)| {
                records
                    .get(id.as_str())
                    .map(|r| Delivery::decode(id, r).map_err(Error::from))
            })
            .collect()
    }

    /// [`Queue::dead_after`] over the sorted sets `key(shard)`.
    async fn dead_walk(
        &self,
        key: impl Fn(u16) -> String,
        after: Option<(Millis, &DeliveryId)>,
        limit: usize,
    ) -> Result<Vec<(Millis, Delivery)>, Error> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let batches = (0..self.shards)
            .map(|s| {
                let key = key(s);
                let mut later = ::redis::cmd("ZRANGEBYSCORE");
                later.arg(&key);
                match after {
                    Some((at, _)) => later.arg(format!("({at}")),
                    None => later.arg("-inf"),
                };
                later.arg("+inf").arg("WITHSCORES").arg("LIMIT").arg(0).arg(limit);
                let mut cmds = vec![later];
                if let Some((at, _)) = after {
                    // Deliveries that died in the same millisecond as the
                    // last one returned: those with a greater id come next.
                    let mut ties = ::redis::cmd("ZRANGEBYSCORE");
                    ties.arg(&key).arg(at).arg(at).arg("WITHSCORES");
                    cmds.push(ties);
                }
                cmds
            })
            .collect();
        let mut all = Vec::new();
        for replies in self.redis.per_shard("dead_after", batches).await? {
            for reply in replies {
                all.extend(pairs(reply)?);
            }
        }
        if let Some((at, id)) = after {
            all.retain(|(member, score)| *score as Millis > at || member.as_str() > id.as_str());
        }
        all.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(limit);
        let records = self.records_of(&all).await?;
        all.iter()
            .filter_map(|(id, at)| {
                records
                    .get(id.as_str())
                    .map(|r| Delivery::decode(id, r).map(|d| (*at as Millis, d)).map_err(Error::from))
            })
            .collect()
    }
}

impl RedisQueue {
    /// The stored records of `ids` (the first of each pair), by id; ids
    /// without a record are left out.
    async fn records_of<'a>(
        &self,
        ids: &'a [(String, f64)],
    ) -> Result<std::collections::HashMap<&'a str, Vec<u8>>, Error> {
        let mut by_shard: Vec<(u16, Vec<&str>)> = Vec::new();
        for (id, _) in ids {
            let shard = DeliveryId::parse(id).map(|d| d.shard()).unwrap_or(0);
            match by_shard.iter_mut().find(|(s, _)| *s == shard) {
                Some((_, list)) => list.push(id),
                None => by_shard.push((shard, vec![id])),
            }
        }
        let batches = by_shard
            .iter()
            .map(|(s, list)| {
                let mut cmd = ::redis::cmd("HMGET");
                cmd.arg(records_key(&self.prefix, *s)).arg(list);
                vec![cmd]
            })
            .collect();
        let mut records = std::collections::HashMap::new();
        for ((_, list), replies) in by_shard.iter().zip(self.redis.per_shard("records", batches).await?) {
            let Some(Value::Array(values)) = replies.into_iter().next() else {
                continue;
            };
            for (id, value) in list.iter().zip(values) {
                if let Some(record) = bytes_of(value)? {
                    records.insert(*id, record);
                }
            }
        }
        Ok(records)
    }
}

/// Decodes a `WITHSCORES` reply into (member, score) pairs.
fn pairs(value: Value) -> Result<Vec<(String, f64)>, Error> {
    match value {
        Value::Nil => Ok(Vec::new()),
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len() / 2);
            let mut items = items.into_iter();
            while let (Some(member), Some(score)) = (items.next(), items.next()) {
                out.push((text(member)?, score_of(&score)?));
            }
            Ok(out)
        }
        Value::Map(entries) => entries
            .into_iter()
            .map(|(member, score)| Ok((text(member)?, score_of(&score)?)))
            .collect(),
        other => Err(unexpected("a list of members and scores", &other)),
    }
}

fn unexpected(wanted: &str, got: &Value) -> Error {
    Error::Redis(format!("unexpected reply from Redis: wanted {wanted}, got {got:?}"))
}

fn text(value: Value) -> Result<String, Error> {
    match value {
        Value::BulkString(bytes) => {
            String::from_utf8(bytes).map_err(|e| Error::Redis(format!("non-UTF-8 member: {e}")))
        }
        Value::SimpleString(s) => Ok(s),
        other => Err(unexpected("a string", &other)),
    }
}

fn bytes_of(value: Value) -> Result<Option<Vec<u8>>, Error> {
    match value {
        Value::Nil => Ok(None),
        Value::BulkString(bytes) => Ok(Some(bytes)),
        Value::SimpleString(s) => Ok(Some(s.into_bytes())),
        other => Err(unexpected("a string or nil", &other)),
    }
}

fn score_of(value: &Value) -> Result<f64, Error> {
    match value {
        Value::Int(n) => Ok(*n as f64),
        Value::Double(d) => Ok(*d),
        Value::BulkString(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .ok_or_else(|| unexpected("a number", value)),
        Value::SimpleString(s) => s.parse::<f64>().map_err(|_| unexpected("a number", value)),
        other => Err(unexpected("a number", other)),
    }
}

fn optional_score(value: Value) -> Result<Option<Millis>, Error> {
    match value {
        Value::Nil => Ok(None),
        other => Ok(Some(score_of(&other)? as Millis)),
    }
}

fn int_of(value: &Value) -> Result<i64, Error> {
    score_of(value).map(|n| n as i64)
}

/// Decodes a subscription's state hash (an HGETALL reply, as a list of
/// fields and values or a map); an empty or missing hash is the default.
fn state_of(name: &str, value: Value) -> Result<SubscriptionState, Error> {
    let fields: Vec<(Value, Value)> = match value {
        Value::Nil => Vec::new(),
        Value::Array(items) => {
            let mut fields = Vec::with_capacity(items.len() / 2);
            let mut items = items.into_iter();
            while let (Some(field), Some(value)) = (items.next(), items.next()) {
                fields.push((field, value));
            }
            fields
        }
        Value::Map(entries) => entries,
        other => return Err(unexpected("a subscription state hash", &other)),
    };
    let corrupt = |reason: String| Error::CorruptState {
        subscription: name.to_owned(),
        reason,
    };
    let time = |field: &str, text: &str| {
        text.parse::<Millis>()
            .map_err(|_| corrupt(format!("field {field} = `{text}` is not a time in ms")))
    };
    let mut state = SubscriptionState::default();
    for (field, value) in fields {
        let field = text(field)?;
        let value = text(value)?;
        match field.as_str() {
            "enabled" => {
                state.enabled = match value.as_str() {
                    "1" => true,
                    "0" => false,
                    _ => return Err(corrupt(format!("field enabled = `{value}` is not 1 or 0"))),
                }
            }
            "reason" => state.reason = Some(value),
            "since" => state.since = time("since", &value)?,
            "consecutive_failures" => {
                state.consecutive_failures = value
                    .parse()
                    .map_err(|_| corrupt(format!("field consecutive_failures = `{value}` is not a count")))?
            }
            "failing_since" => state.failing_since = Some(time("failing_since", &value)?),
            "last_success_at" => state.last_success_at = Some(time("last_success_at", &value)?),
            "last_failure_at" => state.last_failure_at = Some(time("last_failure_at", &value)?),
            // Written by a newer hookd: not ours to judge.
            _ => {}
        }
    }
    Ok(state)
}

/// What one claim script run handed out: each claim with the due time it
/// had, and the next due time.
type ClaimReply = (Vec<(Claim, f64)>, Option<Millis>);

/// Decodes the claim script's reply: the claims, each with the due time it
/// had (oldest first), and the next due time. A corrupt record is logged
/// and left leased (it falls due again when the lease runs out) so the
/// rest can proceed.
fn claim_reply(value: Value) -> Result<ClaimReply, Error> {
    let Value::Array(items) = value else {
        return Err(unexpected("the claim script's list", &value));
    };
    let mut items = items.into_iter();
    let next_due = optional_score(items.next().unwrap_or(Value::Nil))?;
    let lease = Lease(optional_score(items.next().unwrap_or(Value::Nil))?.unwrap_or_default());
    let mut out = Vec::with_capacity(items.len() / 3);
    while let (Some(id), Some(record), Some(score)) = (items.next(), items.next(), items.next()) {
        let (id, score) = (text(id)?, score_of(&score)?);
        let record = bytes_of(record)?.unwrap_or_default();
        match Delivery::decode(&id, &record) {
            Ok(delivery) => out.push((Claim { delivery, lease }, score)),
            Err(e) => tracing::error!(delivery = %id, error = %e, "skipping a corrupt delivery record"),
        }
    }
    Ok((out, next_due))
}

#[async_trait::async_trait]
impl Queue for RedisQueue {
    async fn enqueue(&self, events: &[NewEvent], window: Duration) -> Result<Vec<Enqueued>, Error> {
        let placed: Vec<u16> = events.iter().map(|e| e.shard(self.shards)).collect::<Result<_, _>>()?;
        let mut shards: Vec<u16> = placed.clone();
        shards.sort_unstable();
        shards.dedup();
        let window = millis(window).max(1);
        let groups = self.redis.groups(shards);
        let calls = groups
            .iter()
            .map(|group| {
                let mut call = Call::default();
                for &s in group {
                    call.keys.push(due_key(&self.prefix, s));
                    call.keys.push(records_key(&self.prefix, s));
                    call.keys.push(owner_key(&self.prefix, s));
                    call.keys.push(pending_key(&self.prefix, s));
                }
                call.arg(window);
                call.arg(self.wall());
                for (event, &shard) in events.iter().zip(&placed) {
                    let Some(g) = group.iter().position(|&s| s == shard) else {
                        continue;
                    };
                    call.keys.push(seen_key(&self.prefix, shard, event.dedup_key()));
                    call.arg(g + 1);
                    call.arg(call.keys.len());
                    call.arg(event.deliveries.len());
                    for d in &event.deliveries {
                        call.arg(&d.id);
                        call.args.push(d.encode());
                        call.args
                            .push(d.owner().map(|t| t.as_str().as_bytes().to_vec()).unwrap_or_default());
                    }
                }
                call
            })
            .collect();
        let replies = self
            .redis
            .eval_replicated("enqueue", &ENQUEUE, calls, self.wait_replicas, self.wait_timeout)
            .await?;
        let mut results = vec![Enqueued::Duplicate; events.len()];
        for (group, reply) in groups.iter().zip(replies) {
            let Value::Array(flags) = reply else {
                return Err(unexpected("the enqueue script's list", &reply));
            };
            let slots = placed
                .iter()
                .enumerate()
                .filter(|(_, s)| group.contains(s))
                .map(|(i, _)| i);
            for (i, flag) in slots.zip(flags) {
                if int_of(&flag)? == 1 {
                    results[i] = Enqueued::Accepted;
                }
            }
        }
        Ok(results)
    }

    async fn claim(&self, now: Millis, lease: Duration, max: usize) -> Result<Claimed, Error> {
        if max == 0 {
            return Ok(Claimed::default());
        }
        let lease = millis(lease);
        let order: Vec<u16> = (0..self.shards).collect();
        let (claims, next_due) = if self.redis.is_cluster() {
            self.claim_cluster(&order, now, lease, max).await?
        } else {
            let call = self.claim_call(&order, now, lease, max);
            let reply = self
                .redis
                .eval("claim", &CLAIM, vec![call])
                .await?
                .pop()
                .unwrap_or(Value::Nil);
            let (claims, next_due) = claim_reply(reply)?;
            (claims.into_iter().map(|(claim, _)| claim).collect(), next_due)
        };
        let next_due = if claims.is_empty() { next_due } else { None };
        Ok(Claimed { claims, next_due })
    }

    async fn settle(&self, settlements: &[Settlement]) -> Result<(), Error> {
        if settlements.is_empty() {
            return Ok(());
        }
        let mut shards: Vec<u16> = settlements.iter().map(|s| s.id().shard()).collect();
        shards.sort_unstable();
        shards.dedup();
        let wall = self.wall();
        let calls = self
            .redis
            .groups(shards)
            .into_iter()
            .map(|group| {
                let mut call = Call::default();
                for &s in &group {
                    call.keys.push(due_key(&self.prefix, s));
                    call.keys.push(records_key(&self.prefix, s));
                    call.keys.push(dead_key(&self.prefix, s));
                    call.keys.push(parked_at_key(&self.prefix, s));
                    call.keys.push(owner_key(&self.prefix, s));
                    call.keys.push(pending_key(&self.prefix, s));
                }
                call.arg(wall);
                for settlement in settlements {
                    let Some(g) = group.iter().position(|&s| s == settlement.id().shard()) else {
                        continue;
                    };
                    let shard = settlement.id().shard();
                    let (kind, lease, due, record) = match settlement {
                        Settlement::Ack { lease, .. } => ("ack", lease, None, None),
                        Settlement::Retry { delivery, lease, due } => {
                            ("retry", lease, Some(due.to_string()), Some(delivery))
                        }
                        Settlement::Defer { lease, due, .. } => ("defer", lease, Some(due.to_string()), None),
                        Settlement::Dead { delivery, lease } => {
                            let keys: Vec<String> = DeadScope::of(delivery)
                                .iter()
                                .map(|scope| dead_by_key(&self.prefix, shard, scope))
                                .collect();
                            ("dead", lease, Some(keys.join("\n")), Some(delivery))
                        }
                        Settlement::Park { lease, .. } => {
                            ("park", lease, Some(parked_key_base(&self.prefix, shard)), None)
                        }
                    };
                    call.arg(kind);
                    call.arg(g + 1);
                    call.arg(settlement.id());
                    call.arg(lease.0);
                    call.args.push(due.map(String::into_bytes).unwrap_or_default());
                    call.args.push(record.map(Delivery::encode).unwrap_or_default());
                }
                call
            })
            .collect();
        let replies = self.redis.eval("settle", &SETTLE, calls).await?;
        let applied: i64 = replies.iter().map(int_of).sum::<Result<i64, Error>>()?;
        let skipped = settlements.len() as i64 - applied;
        if skipped > 0 {
            tracing::debug!(
                skipped,
                "settlements skipped: their lease had run out (or a park found no readable record)"
            );
        }
        Ok(())
    }

    async fn get(&self, id: &DeliveryId) -> Result<Option<(Delivery, Standing)>, Error> {
        let s = id.shard();
        let mut record = ::redis::cmd("HGET");
        record.arg(records_key(&self.prefix, s)).arg(id.as_str());
        let mut due = ::redis::cmd("ZSCORE");
        due.arg(due_key(&self.prefix, s)).arg(id.as_str());
        let mut dead = ::redis::cmd("ZSCORE");
        dead.arg(dead_key(&self.prefix, s)).arg(id.as_str());
        let mut parked = ::redis::cmd("HGET");
        parked.arg(parked_at_key(&self.prefix, s)).arg(id.as_str());
        let mut replies = self
            .redis
            .per_shard("get", vec![vec![record, due, dead, parked]])
            .await?
            .pop()
            .unwrap_or_default()
            .into_iter();
        let mut next = || replies.next().unwrap_or(Value::Nil);
        let (record, due, dead, parked) = (
            bytes_of(next())?,
            optional_score(next())?,
            optional_score(next())?,
            optional_score(next())?,
        );
        let Some(record) = record else {
            return Ok(None);
        };
        let standing = match (due, parked, dead) {
            (Some(due), _, _) => Standing::Pending { due },
            (None, Some(since), _) => Standing::Parked { since },
            (None, None, Some(since)) => Standing::Dead { since },
            (None, None, None) => return Ok(None),
        };
        Ok(Some((Delivery::decode(id.as_str(), &record)?, standing)))
    }

    async fn dead(&self, limit: usize) -> Result<Vec<Delivery>, Error> {
        self.dead_newest(|s| dead_key(&self.prefix, s), limit).await
    }

    async fn dead_after(
        &self,
        after: Option<(Millis, &DeliveryId)>,
        limit: usize,
    ) -> Result<Vec<(Millis, Delivery)>, Error> {
        self.dead_walk(|s| dead_key(&self.prefix, s), after, limit).await
    }

    async fn dead_in(&self, scope: &DeadScope, limit: usize) -> Result<Vec<Delivery>, Error> {
        self.dead_newest(|s| dead_by_key(&self.prefix, s, scope), limit).await
    }

    async fn dead_in_after(
        &self,
        scope: &DeadScope,
        after: Option<(Millis, &DeliveryId)>,
        limit: usize,
    ) -> Result<Vec<(Millis, Delivery)>, Error> {
        self.dead_walk(|s| dead_by_key(&self.prefix, s, scope), after, limit)
            .await
    }

    async fn reschedule(&self, id: &DeliveryId, expected: Lease, due: Millis) -> Result<bool, Error> {
        let s = id.shard();
        let mut call = Call {
            keys: vec![due_key(&self.prefix, s)],
            args: Vec::new(),
        };
        call.arg(id);
        call.arg(expected.0);
        call.arg(due);
        call.arg(self.wall());
        let reply = self.redis.eval("reschedule", &RESCHEDULE, vec![call]).await?;
        Ok(reply.first().map(int_of).transpose()? == Some(1))
    }

    async fn replay(&self, id: &DeliveryId, now: Millis) -> Result<bool, Error> {
        let s = id.shard();
        let mut dead = ::redis::cmd("ZSCORE");
        dead.arg(dead_key(&self.prefix, s)).arg(id.as_str());
        let mut record = ::redis::cmd("HGET");
        record.arg(records_key(&self.prefix, s)).arg(id.as_str());
        let mut replies = self
            .redis
            .per_shard("replay", vec![vec![dead, record]])
            .await?
            .pop()
            .unwrap_or_default()
            .into_iter();
        let dead_at = replies.next().map(optional_score).transpose()?.flatten();
        let record = replies.next().map(bytes_of).transpose()?.flatten();
        let (Some(dead_at), Some(record)) = (dead_at, record) else {
            return Ok(false);
        };
        let mut delivery = Delivery::decode(id.as_str(), &record)?;
        delivery.attempts = 0;
        delivery.last_error = None;
        let mut call = Call {
            keys: vec![
                dead_key(&self.prefix, s),
                due_key(&self.prefix, s),
                records_key(&self.prefix, s),
                owner_key(&self.prefix, s),
                pending_key(&self.prefix, s),
            ],
            args: Vec::new(),
        };
        call.keys.extend(
            DeadScope::of(&delivery)
                .iter()
                .map(|scope| dead_by_key(&self.prefix, s, scope)),
        );
        call.arg(id);
        call.arg(dead_at);
        call.args.push(delivery.encode());
        call.arg(now);
        call.arg(self.wall());
        let reply = self.redis.eval("replay", &REPLAY, vec![call]).await?;
        Ok(reply.first().map(int_of).transpose()? == Some(1))
    }

    async fn expire_dead(&self, before: Millis, limit: usize) -> Result<Expired, Error> {
        // Group after group (one on a single node, one per shard on a
        // cluster), each taking what the others left of the budget, so no
        // call removes more than `limit`.
        let mut budget = limit as u64;
        let mut raw = Vec::new();
        let mut removed = 0;
        for group in self.redis.groups((0..self.shards).collect()) {
            if budget == 0 {
                break;
            }
            let mut call = Call::default();
            for &s in &group {
                call.keys.push(dead_key(&self.prefix, s));
                call.keys.push(records_key(&self.prefix, s));
                call.keys.push(owner_key(&self.prefix, s));
            }
            call.arg(before);
            call.arg(self.wall());
            call.arg(budget);
            for &s in &group {
                call.arg(dead_by_key_base(&self.prefix, s));
            }
            let reply = self.redis.eval("expire dead", &EXPIRE_DEAD, vec![call]).await?;
            let Some(Value::Array(items)) = reply.into_iter().next() else {
                return Err(Error::Redis("unexpected reply from the expire script".into()));
            };
            let mut items = items.into_iter();
            let n = items.next().map(|v| int_of(&v)).transpose()?.unwrap_or(0).max(0) as u64;
            while let (Some(id), Some(record)) = (items.next(), items.next()) {
                if let Some(record) = bytes_of(record)? {
                    raw.push((text(id)?, record));
                }
            }
            removed += n;
            budget = budget.saturating_sub(n);
        }
        Ok(Expired::decode(raw, removed))
    }

    async fn depth(&self, now: Millis) -> Result<Depth, Error> {
        let calls = self
            .redis
            .groups((0..self.shards).collect())
            .into_iter()
            .map(|group| {
                let mut call = Call::default();
                for s in group {
                    call.keys.push(due_key(&self.prefix, s));
                    call.keys.push(dead_key(&self.prefix, s));
                    call.keys.push(parked_at_key(&self.prefix, s));
                }
                call.arg(now);
                call.arg(self.wall());
                call
            })
            .collect();
        let mut depth = Depth::default();
        for reply in self.redis.eval("depth", &DEPTH, calls).await? {
            let Value::Array(counts) = reply else {
                return Err(unexpected("the depth script's counts", &reply));
            };
            let n: Vec<u64> = counts
                .iter()
                .map(|v| int_of(v).map(|n| n.max(0) as u64))
                .collect::<Result<_, _>>()?;
            if let [due, total, dead, parked] = n[..] {
                depth.due += due;
                depth.scheduled += total.saturating_sub(due);
                depth.dead += dead;
                depth.parked += parked;
            }
        }
        Ok(depth)
    }

    async fn pending_of(&self, tenant: &TenantId) -> Result<u64, Error> {
        let batches = (0..self.shards)
            .map(|s| {
                let mut cmd = ::redis::cmd("HGET");
                cmd.arg(pending_key(&self.prefix, s)).arg(tenant.as_str());
                vec![cmd]
            })
            .collect();
        let mut total = 0u64;
        for replies in self.redis.per_shard("pending", batches).await? {
            for reply in replies {
                if reply != Value::Nil {
                    total = total.saturating_add(int_of(&reply)?.max(0) as u64);
                }
            }
        }
        Ok(total)
    }

    async fn unpark(&self, subscription: &SubscriptionName, now: Millis) -> Result<u64, Error> {
        // Runs per group until the group's run moves fewer than a batch:
        // one run per round trip on a single node, one per shard (all
        // concurrently) on a cluster.
        let mut pending = self.redis.groups((0..self.shards).collect());
        let mut moved = 0;
        while !pending.is_empty() {
            let calls = pending
                .iter()
                .map(|group| {
                    let mut call = Call::default();
                    for &s in group {
                        call.keys.push(parked_key(&self.prefix, s, subscription));
                        call.keys.push(due_key(&self.prefix, s));
                        call.keys.push(parked_at_key(&self.prefix, s));
                    }
                    call.arg(now);
                    call.arg(self.wall());
                    call.arg(UNPARK_BATCH);
                    call
                })
                .collect();
            let replies = self.redis.eval("unpark", &UNPARK, calls).await?;
            let mut more = Vec::new();
            for (group, reply) in pending.into_iter().zip(replies) {
                let n = int_of(&reply)?.max(0) as u64;
                moved += n;
                if n >= UNPARK_BATCH {
                    more.push(group);
                }
            }
            pending = more;
        }
        Ok(moved)
    }

    async fn ping(&self) -> Result<(), Error> {
        Ok(self.redis.ping().await?)
    }
}

#[async_trait::async_trait]
impl StateStore for RedisQueue {
    async fn subscription_state(&self, subscription: &SubscriptionName) -> Result<SubscriptionState, Error> {
        let mut cmd = ::redis::cmd("HGETALL");
        cmd.arg(subscription_key(&self.prefix, subscription));
        let reply = self
            .redis
            .per_shard("subscription state", vec![vec![cmd]])
            .await?
            .pop()
            .and_then(|r| r.into_iter().next())
            .unwrap_or(Value::Nil);
        state_of(subscription.as_str(), reply)
    }

    async fn subscription_states(&self) -> Result<Vec<(SubscriptionName, SubscriptionState)>, Error> {
        let mut members = ::redis::cmd("SMEMBERS");
        members.arg(subscriptions_key(&self.prefix));
        let reply = self
            .redis
            .per_shard("subscription states", vec![vec![members]])
            .await?
            .pop()
            .and_then(|r| r.into_iter().next())
            .unwrap_or(Value::Nil);
        let items = match reply {
            Value::Nil => Vec::new(),
            Value::Array(items) | Value::Set(items) => items,
            other => return Err(unexpected("a set of subscription names", &other)),
        };
        let mut names = items
            .into_iter()
            .map(|item| {
                let name = text(item)?;
                SubscriptionName::parse(&name).map_err(|reason| Error::CorruptState {
                    subscription: name,
                    reason: format!("bad name in {}: {reason}", subscriptions_key(&self.prefix)),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        names.sort();
        let reads = names
            .iter()
            .map(|name| {
                let mut cmd = ::redis::cmd("HGETALL");
                cmd.arg(subscription_key(&self.prefix, name));
                cmd
            })
            .collect();
        let replies = self
            .redis
            .per_shard("subscription states", vec![reads])
            .await?
            .pop()
            .unwrap_or_default();
        names
            .into_iter()
            .zip(replies)
            .map(|(name, reply)| {
                let state = state_of(name.as_str(), reply)?;
                Ok((name, state))
            })
            .collect()
    }

    async fn set_enabled(
        &self,
        subscription: &SubscriptionName,
        enabled: bool,
        reason: Option<String>,
        now: Millis,
    ) -> Result<bool, Error> {
        let mut call = Call {
            keys: vec![
                subscription_key(&self.prefix, subscription),
                subscriptions_key(&self.prefix),
            ],
            args: Vec::new(),
        };
        call.arg(if enabled { "1" } else { "0" });
        call.arg(subscription);
        call.arg(now);
        call.arg(if reason.is_some() { "1" } else { "0" });
        call.arg(reason.unwrap_or_default());
        let reply = self.redis.eval("set enabled", &SET_ENABLED, vec![call]).await?;
        Ok(reply.first().map(int_of).transpose()? == Some(1))
    }

    async fn record_health(
        &self,
        updates: &[HealthUpdate],
    ) -> Result<Vec<(SubscriptionName, SubscriptionState)>, Error> {
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        let mut call = Call {
            keys: vec![subscriptions_key(&self.prefix)],
            args: Vec::new(),
        };
        let at = |t: Option<Millis>| t.map(|t| t.to_string()).unwrap_or_default();
        for u in updates {
            u.check()?;
            call.keys.push(subscription_key(&self.prefix, &u.subscription));
            call.arg(&u.subscription);
            call.arg(u.successes);
            call.arg(u.failures);
            call.arg(if u.last_outcome_success { "1" } else { "0" });
            call.arg(at(u.last_success_at));
            call.arg(at(u.last_failure_at));
        }
        let reply = self
            .redis
            .eval("record health", &RECORD_HEALTH, vec![call])
            .await?
            .pop()
            .unwrap_or(Value::Nil);
        let Value::Array(states) = reply else {
            return Err(unexpected("the record health script's list", &reply));
        };
        if states.len() != updates.len() {
            return Err(Error::Redis(format!(
                "the record health script answered {} states for {} updates",
                states.len(),
                updates.len()
            )));
        }
        updates
            .iter()
            .zip(states)
            .map(|(u, state)| Ok((u.subscription.clone(), state_of(u.subscription.as_str(), state)?)))
            .collect()
    }

    async fn take_tokens(
        &self,
        subscription: &SubscriptionName,
        limit: &crate::config::RateLimit,
        want: u32,
        now: Millis,
    ) -> Result<super::rate::Tokens, Error> {
        let interval = super::rate::interval(limit);
        let mut call = Call {
            keys: vec![rate_key(&self.prefix, subscription)],
            args: Vec::new(),
        };
        call.arg(interval);
        call.arg(interval * f64::from(limit.burst().saturating_sub(1)));
        call.arg(want);
        call.arg(now);
        call.arg(self.wall());
        let reply = self.redis.eval("take tokens", &TAKE_TOKENS, vec![call]).await?;
        let (granted, next_at) = match reply.first() {
            Some(Value::Array(pair)) if pair.len() == 2 => (int_of(&pair[0])?, int_of(&pair[1])?),
            other => return Err(Error::Redis(format!("take tokens: unexpected reply {other:?}"))),
        };
        Ok(super::rate::Tokens {
            granted: granted.clamp(0, i64::from(want)) as u32,
            next_at: (next_at >= 0).then_some(next_at),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::EventId;

    #[test]
    fn the_scripts_tolerance_is_the_documented_one() {
        assert!(CLOCK_LUA.contains(&format!("math.abs(d) < {CLOCK_TOLERANCE_MS} then")));
    }

    #[test]
    fn keys_carry_the_shard_hash_tag() {
        let event = EventId::parse("evt_1").unwrap();
        assert_eq!(due_key("hookd", 3), "hookd:{3}:due");
        assert_eq!(records_key("hookd", 3), "hookd:{3}:records");
        assert_eq!(dead_key("hookd", 3), "hookd:{3}:dead");
        assert_eq!(seen_key("hookd", 3, event.as_str()), "hookd:{3}:seen:evt_1");
        assert_eq!(seen_key("hookd", 3, "evt_1/replay/k"), "hookd:{3}:seen:evt_1/replay/k");
        let crm = SubscriptionName::parse("crm").unwrap();
        assert_eq!(parked_key("hookd", 3, &crm), "hookd:{3}:parked:crm");
        assert_eq!(parked_at_key("hookd", 3), "hookd:{3}:parked_at");
        assert_eq!(owner_key("hookd", 3), "hookd:{3}:owner");
        assert_eq!(pending_key("hookd", 3), "hookd:{3}:pending");
        assert_eq!(subscription_key("hookd", &crm), "hookd:{s}:sub:crm");
        assert_eq!(subscriptions_key("hookd"), "hookd:{s}:subscriptions");
    }
}
