//! The Lua scripts of the Redis backend, one per operation, each
//! documented with its KEYS, ARGV and reply. Every script that reads time
//! starts with [`CLOCK_LUA`]; see the parent module for whose clock that is.

use std::sync::LazyLock;

use ::redis::Script;

/// What every script that reads time starts with. `shift(wall)` is how far
/// Redis's clock (`TIME`) is ahead of the caller's, whose reading is
/// `wall`: zero when they are within [`super::CLOCK_TOLERANCE_MS`], so that the
/// time a call takes to reach Redis does not move the times of a caller
/// whose clock is right (a retry due in 5 s stays due at exactly that
/// ms). `ms(x)` writes a time as a whole number (a score or field Lua
/// would otherwise print in exponent form). Scripts that write after
/// reading `TIME` replicate their effects (the default from Redis 7; asked
/// for on Redis 5 and 6).
pub(super) const CLOCK_LUA: &str = r#"
redis.replicate_commands()
local function shift(wall)
  local t = redis.call('TIME')
  local d = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(wall)
  if math.abs(d) < 500 then return 0 end
  return d
end
local function ms(x) return string.format('%.0f', x) end
"#;

/// Lanes, what every script that changes `due` also starts with (see
/// [`super::lanes_key`]): `<lanes>:<owner>` mirrors the part of a shard's
/// `due` that `owner` owns (a tenant, or `''` for the operator's
/// subscriptions), and `lanes` scores each lane by its turn: the later of
/// its lowest score and 1 ms after a claim last served it
/// (`<lanes>_served`), so a lane just served waits behind every lane with
/// something due by then. A script changes lanes with `lane_put` (`zargs` = {score, id,
/// ...}), `lane_drop` and `lane_served`, and calls `lane_heads()` once at
/// the end, which rescores the lanes it changed and forgets the empty
/// ones. `lane_of` is a delivery's lane, from the shard's `owner` hash;
/// `group(groups, lane)` the list `groups` gathers for a lane (made on
/// first use), for one `lane_put` or `lane_drop` per lane.
const LANES_LUA: &str = r#"
local function group(groups, lane)
  local list = groups[lane]
  if list == nil then
    list = {}
    groups[lane] = list
  end
  return list
end
local lanes_changed = {}
local function lane_mark(lanes, owner)
  group(lanes_changed, lanes)[owner] = true
end
local function lane_put(lanes, owner, zargs)
  for from = 1, #zargs, 1000 do
    redis.call('ZADD', lanes .. ':' .. owner, unpack(zargs, from, math.min(from + 999, #zargs)))
  end
  lane_mark(lanes, owner)
end
local function lane_drop(lanes, owner, ids)
  for from = 1, #ids, 1000 do
    redis.call('ZREM', lanes .. ':' .. owner, unpack(ids, from, math.min(from + 999, #ids)))
  end
  lane_mark(lanes, owner)
end
local function lane_served(lanes, owner, now)
  redis.call('HSET', lanes .. '_served', owner, now)
  lane_mark(lanes, owner)
end
local function lane_of(owner_hash, id)
  return redis.call('HGET', owner_hash, id) or ''
end
local function lane_heads()
  for lanes, owners in pairs(lanes_changed) do
    for owner in pairs(owners) do
      local head = redis.call('ZRANGE', lanes .. ':' .. owner, 0, 0, 'WITHSCORES')
      if head[2] then
        local turn = tonumber(head[2])
        local served = tonumber(redis.call('HGET', lanes .. '_served', owner) or '')
        if served and served > turn then turn = served end
        redis.call('ZADD', lanes, string.format('%.0f', turn), owner)
      else
        redis.call('ZREM', lanes, owner)
        redis.call('HDEL', lanes .. '_served', owner)
      end
    end
  end
  lanes_changed = {}
end
"#;

/// Picking what a claim takes, shared by the claim and peek scripts.
/// `pick(now, max)` picks up to `max` deliveries due at `now` (Redis's
/// clock) from the shards of KEYS, four keys each (`due`, `records`,
/// `owner`, `lanes`). Owners take turns, so that one tenant's backlog
/// never holds up another's deliveries: of the owners with a due lane (at
/// most `max`, those whose turn in `lanes` comes first), each hands over
/// its oldest due delivery in turn, the owner whose turn is first first,
/// up to `ceil(max / owners)` each. What that leaves of `max` goes to the
/// oldest due deliveries not picked, whoever owns them (and any that no
/// lane holds). Ties are broken by id, compared bytewise whatever the
/// server's locale. `pick(now, max, quotas)` with `quotas` = {owner, n,
/// ...} takes instead the n oldest due of each owner named, in that order,
/// before the fill (n may be 0: the owner is served, taking nothing): a
/// cluster's claim, whose turns were taken over all shards by the caller.
/// Returns `{{id, score, shard, owner or false, turn}, ...}` in pick
/// order, where `owner` is false for a delivery picked from `due` alone
/// and `turn` is the owner's turn (or the delivery's score), and the
/// owners served, `{{owner, {shard, ...}}, ...}`: a claim marks their
/// lanes served.
const PICK_LUA: &str = r#"
local function before(a, b)
  for k = 1, math.min(#a, #b) do
    local x, y = string.byte(a, k), string.byte(b, k)
    if x ~= y then return x < y end
  end
  return #a < #b
end
local function earlier(x, a, y, b)
  if x ~= y then return x < y end
  return before(a, b)
end
-- Merges flat lists {id, score, ...}, each in (score, id) order, into one
-- list of {id, score, k} (k: the list it came from) in that order, at
-- most `limit` long, leaving out the ids in `skip`.
local function merge(lists, limit, skip)
  local pos, out = {}, {}
  for k = 1, #lists do pos[k] = 1 end
  while #out < limit do
    local best, best_score, best_id = nil, nil, nil
    for k = 1, #lists do
      local list, p = lists[k], pos[k]
      while p < #list and skip[list[p]] do p = p + 2 end
      pos[k] = p
      if p < #list then
        local score, id = tonumber(list[p + 1]), list[p]
        if best == nil or earlier(score, id, best_score, best_id) then
          best, best_score, best_id = k, score, id
        end
      end
    end
    if best == nil then break end
    out[#out + 1] = {best_id, best_score, best}
    pos[best] = pos[best] + 2
  end
  return out
end
local function pick(now, max, quotas)
  local shards = #KEYS / 4
  local owners, of = {}, {}
  for s = 1, quotas and 0 or shards do
    local due_lanes = redis.call('ZRANGEBYSCORE', KEYS[4 * s], '-inf', now, 'WITHSCORES', 'LIMIT', 0, max)
    for j = 1, #due_lanes, 2 do
      local owner, turn = due_lanes[j], tonumber(due_lanes[j + 1])
      local o = of[owner]
      if o == nil then
        o = {owner = owner, turn = turn}
        of[owner] = o
        owners[#owners + 1] = o
      elseif turn < o.turn then
        o.turn = turn
      end
    end
  end
  local out, skip, served = {}, {}, {}
  for q = 1, quotas and #quotas or 0, 2 do
    local owner, n = quotas[q], tonumber(quotas[q + 1])
    local lists, all = {}, {}
    for s = 1, shards do
      if n > 0 then
        lists[s] = redis.call('ZRANGEBYSCORE', KEYS[4 * s] .. ':' .. owner, '-inf', now, 'WITHSCORES', 'LIMIT', 0, n)
      else
        lists[s] = {}
      end
      all[s] = s
    end
    served[#served + 1] = {owner, all}
    for _, item in ipairs(merge(lists, n, skip)) do
      out[#out + 1] = {item[1], item[2], item[3], owner, item[2]}
      skip[item[1]] = true
    end
  end
  if #owners > 0 then
    table.sort(owners, function(a, b) return earlier(a.turn, a.owner, b.turn, b.owner) end)
    while #owners > max do owners[#owners] = nil end
    local share = math.ceil(max / #owners)
    for _, o in ipairs(owners) do
      -- An owner's share is its `share` oldest due in every shard, so one
      -- owner alone is claimed oldest first whatever its lanes' turns.
      local lists, from, shards_of = {}, {}, {}
      for s = 1, shards do
        local got = redis.call('ZRANGEBYSCORE', KEYS[4 * s] .. ':' .. o.owner, '-inf', now, 'WITHSCORES', 'LIMIT', 0, share)
        if #got > 0 then
          lists[#lists + 1] = got
          from[#from + 1] = s
          shards_of[#shards_of + 1] = s
        end
      end
      served[#served + 1] = {o.owner, shards_of}
      o.items = merge(lists, share, skip)
      for _, item in ipairs(o.items) do item[3] = from[item[3]] end
    end
    local round = 1
    while #out < max do
      local any = false
      for _, o in ipairs(owners) do
        local item = o.items[round]
        if item and #out < max then
          any = true
          out[#out + 1] = {item[1], item[2], item[3], o.owner, o.turn}
          skip[item[1]] = true
        end
      end
      if not any then break end
      round = round + 1
    end
  end
  if #out < max then
    local lists = {}
    for s = 1, shards do
      lists[s] = redis.call('ZRANGEBYSCORE', KEYS[4 * s - 3], '-inf', now, 'WITHSCORES', 'LIMIT', 0, max + #out)
    end
    for _, item in ipairs(merge(lists, max - #out, skip)) do
      out[#out + 1] = {item[1], item[2], item[3], false, item[2]}
    end
  end
  return out, served
end
"#;

/// Enqueue. KEYS: `due`, `records`, `owner`, `pending`, `lanes` per shard group,
/// then one `seen` key per event. ARGV: window ms, the caller's clock ms,
/// then per event: group number, index of its `seen` key in KEYS, delivery
/// count, and (id, record, owning tenant or empty) triples. Deliveries are
/// due now (in Redis's clock), in `due` and their owner's lane; each owned
/// one is counted in `pending`.
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
      adds = {records = {}, scores = {}, owners = {}, counts = {}, lanes = {}}
      groups[g] = adds
    end
    for j = i, i + 3 * n - 1, 3 do
      table.insert(adds.records, ARGV[j])
      table.insert(adds.records, ARGV[j + 1])
      table.insert(adds.scores, now)
      table.insert(adds.scores, ARGV[j])
      local t = ARGV[j + 2]
      local lane = group(adds.lanes, t)
      lane[#lane + 1] = now
      lane[#lane + 1] = ARGV[j]
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
-- 500 of them, their owners, their lanes, and one HINCRBY per owning tenant.
for g, adds in pairs(groups) do
  for from = 1, #adds.records, 1000 do
    local to = math.min(from + 999, #adds.records)
    redis.call('HSET', KEYS[5 * g - 3], unpack(adds.records, from, to))
    redis.call('ZADD', KEYS[5 * g - 4], unpack(adds.scores, from, to))
  end
  for from = 1, #adds.owners, 1000 do
    redis.call('HSET', KEYS[5 * g - 2], unpack(adds.owners, from, math.min(from + 999, #adds.owners)))
  end
  for t, n in pairs(adds.counts) do
    redis.call('HINCRBY', KEYS[5 * g - 1], t, n)
  end
  for t, zargs in pairs(adds.lanes) do lane_put(KEYS[5 * g], t, zargs) end
end
lane_heads()
return out
"#;

/// Claim. KEYS: `due`, `records`, `owner`, `lanes` per shard. ARGV: the
/// caller's now ms, the caller's clock ms, lease ms, max, then optionally
/// `pick`'s quotas (owner, n, ...). Takes up to `max` deliveries due at
/// now (moved to Redis's clock) over all shards given, as `pick` chooses
/// them (owners in turn, or by the quotas), marks the owners served in
/// each shard's lanes, re-scores them to the
/// lease end (that now plus the lease) in `due` and in their lanes, and
/// returns `{next_due, lease end, id, record, old score, ...}` in pick
/// order; `next_due` is the lowest score left, in the caller's clock, when
/// nothing was claimed (nil otherwise or if empty). Ids whose record is
/// missing are dropped from `due` and their lane; a lane entry whose score
/// `due` does not share (a lane an older hookd did not keep) is corrected
/// from `due`, or dropped, and not claimed.
const CLAIM_LUA: &str = r#"
local shift = shift(ARGV[2])
local now = ms(tonumber(ARGV[1]) + shift)
local lease_end, max = ms(tonumber(now) + tonumber(ARGV[3])), tonumber(ARGV[4])
local quotas = nil
if #ARGV > 4 then quotas = {unpack(ARGV, 5)} end
local picked, served = pick(now, max, quotas)
for _, o in ipairs(served) do
  for _, s in ipairs(o[2]) do lane_served(KEYS[4 * s], o[1], ms(tonumber(now) + 1)) end
end
local by_shard = {}
for _, p in ipairs(picked) do
  local b = group(by_shard, p[3])
  b[#b + 1] = p
end
local records = {}
for s, items in pairs(by_shard) do
  local due, rec, owner, lanes = KEYS[4 * s - 3], KEYS[4 * s - 2], KEYS[4 * s - 1], KEYS[4 * s]
  local sure, unknown = {}, {}
  for _, p in ipairs(items) do
    if p[4] then
      local score = redis.call('ZSCORE', due, p[1])
      if score and tonumber(score) == p[2] then
        sure[#sure + 1] = p
      elseif score then
        lane_put(lanes, p[4], {score, p[1]})
      else
        lane_drop(lanes, p[4], {p[1]})
      end
    else
      sure[#sure + 1] = p
      unknown[#unknown + 1] = p
    end
  end
  for first = 1, #unknown, 1000 do
    local ids = {}
    for i = first, math.min(first + 999, #unknown) do ids[#ids + 1] = unknown[i][1] end
    local got = redis.call('HMGET', owner, unpack(ids))
    for i = 1, #ids do unknown[first + i - 1][4] = got[i] or '' end
  end
  local puts, drops = {}, {}
  for first = 1, #sure, 1000 do
    local zargs, ids = {}, {}
    for i = first, math.min(first + 999, #sure) do
      zargs[#zargs + 1] = lease_end
      zargs[#zargs + 1] = sure[i][1]
      ids[#ids + 1] = sure[i][1]
    end
    redis.call('ZADD', due, unpack(zargs))
    local got = redis.call('HMGET', rec, unpack(ids))
    for i = 1, #ids do
      local o = sure[first + i - 1][4]
      if got[i] then
        records[ids[i]] = got[i]
        local l = group(puts, o)
        l[#l + 1] = lease_end
        l[#l + 1] = ids[i]
      else
        redis.call('ZREM', due, ids[i])
        local l = group(drops, o)
        l[#l + 1] = ids[i]
      end
    end
  end
  for o, zargs in pairs(puts) do lane_put(lanes, o, zargs) end
  for o, ids in pairs(drops) do lane_drop(lanes, o, ids) end
end
lane_heads()
local out = {false, lease_end}
for _, p in ipairs(picked) do
  local r = records[p[1]]
  if r then
    out[#out + 1] = p[1]
    out[#out + 1] = r
    out[#out + 1] = ms(p[2])
  end
end
if #out == 2 then
  for s = 1, #KEYS / 4 do
    local head = redis.call('ZRANGE', KEYS[4 * s - 3], 0, 0, 'WITHSCORES')
    if head[2] then
      local score = tonumber(head[2]) - shift
      if out[1] == false or score < out[1] then out[1] = score end
    end
  end
  if out[1] then out[1] = ms(out[1]) end
end
return out
"#;

/// Peek, on a cluster before claiming. KEYS: one shard's `due`,
/// `records`, `owner`, `lanes`. ARGV: the caller's now ms and clock ms,
/// max. Returns `{{id, score, owner, turn, ...}, head}`: what a claim of
/// `max` would take (`pick`), with scores and turns in Redis's clock and
/// owners (`''` for the operator's), and the lowest score in the caller's
/// clock (nil if empty).
const PEEK_LUA: &str = r#"
local shift = shift(ARGV[2])
local found = {}
for _, p in ipairs(pick(ms(tonumber(ARGV[1]) + shift), tonumber(ARGV[3]))) do
  found[#found + 1] = p[1]
  found[#found + 1] = ms(p[2])
  found[#found + 1] = p[4] or lane_of(KEYS[3], p[1])
  found[#found + 1] = ms(p[5])
end
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

/// Settle. KEYS: `due`, `records`, `dead`, `parked_at`, `owner`, `pending`,
/// `lanes` per shard group.
/// ARGV: the caller's clock ms, then six fields per settlement: kind, group
/// number, id, lease token, new due ms in the caller's clock (for park: the
/// shard's [`super::parked_key_base`]; for dead: its [`super::dead_by_key`]s, one per
/// line), new record (unused fields empty). Deaths
/// and parks are stamped with now in Redis's clock. A settlement applies only while the
/// delivery's score still equals its lease token; a delivery acknowledged
/// earlier in the same call is gone for the settlements after it. A park reads the record
/// for the subscription and `created_at`; one whose record is missing or
/// undecodable is not applied (left leased, it falls due again). An ack or
/// a death takes the delivery out of its owner's `pending` count; an ack
/// forgets its owner too (a dead one keeps it for a replay). Each change to
/// `due` is made to the delivery's lane too. Returns how many applied.
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
  local k = 7 * (g - 1)
  local due, rec, dead, parked_at, owner, lanes = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5], KEYS[k + 7]
  local score = nil
  if not gone[id] then score = redis.call('ZSCORE', due, id) end
  if score and tonumber(score) == lease then
    if kind == 'ack' then
      gone[id] = true
      acked[g] = acked[g] or {}
      table.insert(acked[g], id)
      applied = applied + 1
    elseif kind == 'retry' or kind == 'defer' then
      if kind == 'retry' then redis.call('HSET', rec, id, ARGV[i + 5]) end
      local at = ms(tonumber(ARGV[i + 4]) + shifted())
      redis.call('ZADD', due, at, id)
      lane_put(lanes, lane_of(owner, id), {at, id})
      applied = applied + 1
    elseif kind == 'dead' then
      redis.call('ZREM', due, id)
      lane_drop(lanes, lane_of(owner, id), {id})
      redis.call('HSET', rec, id, ARGV[i + 5])
      local at = ms(tonumber(ARGV[1]) + shifted())
      redis.call('ZADD', dead, at, id)
      for key in string.gmatch(ARGV[i + 4], '[^\n]+') do redis.call('ZADD', key, at, id) end
      local t = redis.call('HGET', owner, id)
      if t then release(KEYS[k + 6], t, 1) end
      applied = applied + 1
    elseif kind == 'park' then
      local ok, d = pcall(cjson.decode, redis.call('HGET', rec, id) or '')
      if ok and type(d) == 'table' and type(d.created_at) == 'number'
          and type(d.subscription) == 'string' and string.find(d.subscription, '^[%w%-_%.]+$') then
        redis.call('ZREM', due, id)
        lane_drop(lanes, lane_of(owner, id), {id})
        redis.call('ZADD', ARGV[i + 4] .. d.subscription, string.format('%.0f', d.created_at), id)
        redis.call('HSET', parked_at, id, ms(tonumber(ARGV[1]) + shifted()))
        applied = applied + 1
      end
    end
  end
end
for g, ids in pairs(acked) do
  local k = 7 * (g - 1)
  for from = 1, #ids, 1000 do
    local part = {unpack(ids, from, math.min(from + 999, #ids))}
    redis.call('ZREM', KEYS[k + 1], unpack(part))
    redis.call('HDEL', KEYS[k + 2], unpack(part))
    local owners, counts, lanes = redis.call('HMGET', KEYS[k + 5], unpack(part)), {}, {}
    for j = 1, #part do
      local t = owners[j] or ''
      if t ~= '' then counts[t] = (counts[t] or 0) + 1 end
      table.insert(group(lanes, t), part[j])
    end
    for t, n in pairs(counts) do release(KEYS[k + 6], t, n) end
    for t, lane in pairs(lanes) do lane_drop(KEYS[k + 7], t, lane) end
    redis.call('HDEL', KEYS[k + 5], unpack(part))
  end
end
lane_heads()
return applied
"#;

/// Unpark. KEYS: `parked:<subscription>`, `due`, `parked_at`, `owner`,
/// `lanes` per shard.
/// ARGV: the caller's now ms, the caller's clock ms, most to move. Moves the lowest-scored parked deliveries,
/// shard after shard, back to `due` scored by their `created_at` (at most
/// now), until that many moved. Returns how many moved: fewer than asked
/// means every shard given is empty.
const UNPARK_LUA: &str = r#"
local now = tonumber(ARGV[1]) + shift(ARGV[2])
local budget = tonumber(ARGV[3])
local moved = 0
for s = 1, #KEYS / 5 do
  if budget <= 0 then break end
  local parked, due, parked_at, owner, lanes = KEYS[5 * s - 4], KEYS[5 * s - 3], KEYS[5 * s - 2], KEYS[5 * s - 1], KEYS[5 * s]
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
    local owners, by_lane = redis.call('HMGET', owner, unpack(ids)), {}
    for j = 1, #ids do
      local t = owners[j] or ''
      local lane = group(by_lane, t)
      lane[#lane + 1] = zargs[2 * j - 1]
      lane[#lane + 1] = ids[j]
    end
    for t, lane in pairs(by_lane) do lane_put(lanes, t, lane) end
    redis.call('ZREM', parked, unpack(ids))
    redis.call('HDEL', parked_at, unpack(ids))
    moved = moved + #ids
    budget = budget - #ids
  end
end
lane_heads()
return moved
"#;

/// Expire dead. KEYS: `dead`, `records`, `owner` per shard. ARGV: cutoff
/// ms, the caller's clock ms (the cutoff is moved to Redis's clock), most
/// to remove, then each shard's [`super::dead_by_key_base`]. Each removed
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
/// indexes. KEYS: `dead`, `records`, [`super::dead_by_filed_key`] of one shard.
/// ARGV: its [`super::dead_by_key_base`], the rank to start at, how many. Files
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

/// File due deliveries in lanes, for a shard written before lanes. KEYS:
/// `due`, `owner`, `lanes`, [`super::lanes_filed_key`] of one shard. ARGV:
/// the rank to start at, how many. Files that many due deliveries in their
/// owner's lane at their score and, past the last, sets the marker.
/// Returns how many it read, or -1 when done.
const FILE_LANES_LUA: &str = r#"
local from, n = tonumber(ARGV[1]), tonumber(ARGV[2])
local items = redis.call('ZRANGE', KEYS[1], from, from + n - 1, 'WITHSCORES')
local by_lane = {}
for j = 1, #items, 2 do
  local t = lane_of(KEYS[2], items[j])
  local lane = group(by_lane, t)
  lane[#lane + 1] = items[j + 1]
  lane[#lane + 1] = items[j]
end
for t, lane in pairs(by_lane) do lane_put(KEYS[3], t, lane) end
lane_heads()
if #items < 2 * n then
  redis.call('SET', KEYS[4], '1')
  return -1
end
return #items / 2
"#;

/// Set enabled. KEYS: the subscription's state hash, the index set. ARGV:
/// `1`/`0` (enable/disable), name, now ms, `1` if a reason follows, the
/// reason. Mirrors [`crate::queue::SubscriptionState::set_enabled`]. Returns 1 if the
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
/// none). Mirrors [`crate::queue::SubscriptionState::apply`], update after update.
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

/// Replay. KEYS: `dead`, `due`, `records`, `owner`, `pending`, `lanes` of
/// one shard, then the delivery's [`super::dead_by_key`]s. ARGV: id, the dead score the caller read, the reset record, the
/// caller's now ms, the caller's clock ms. Moves the delivery back to `due`
/// (due at now, moved to Redis's clock) if it is still dead since that
/// time, counting it in its owner's `pending` again. Returns 1 if moved.
const REPLAY_LUA: &str = r#"
local at = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not at or tonumber(at) ~= tonumber(ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
local at = ms(tonumber(ARGV[4]) + shift(ARGV[5]))
redis.call('ZADD', KEYS[2], at, ARGV[1])
local t = redis.call('HGET', KEYS[4], ARGV[1])
if t then redis.call('HINCRBY', KEYS[5], t, 1) end
lane_put(KEYS[6], t or '', {at, ARGV[1]})
lane_heads()
for k = 7, #KEYS do redis.call('ZREM', KEYS[k], ARGV[1]) end
return 1
"#;

/// Reschedule. KEYS: `due`, `owner`, `lanes` of one shard. ARGV: id, the due time the caller
/// expects it to have (its lease token, in Redis's clock), the new due time
/// and the caller's clock ms. Returns 1 if it still had that due time and
/// moved.
const RESCHEDULE_LUA: &str = r#"
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not due or tonumber(due) ~= tonumber(ARGV[2]) then return 0 end
local at = ms(tonumber(ARGV[3]) + shift(ARGV[4]))
redis.call('ZADD', KEYS[1], at, ARGV[1])
lane_put(KEYS[3], lane_of(KEYS[2], ARGV[1]), {at, ARGV[1]})
lane_heads()
return 1
"#;

/// Take tokens. KEYS: the subscription's [`rate_key`]. ARGV: emission
/// interval ms, tolerance ms (`(burst - 1) * interval`), tokens wanted, the
/// caller's now ms and clock ms. Mirrors [`crate::queue::rate::take`] in Redis's
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

pub(super) static ENQUEUE: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{CLOCK_LUA}{LANES_LUA}{ENQUEUE_LUA}")));
pub(super) static CLAIM: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{CLOCK_LUA}{LANES_LUA}{PICK_LUA}{CLAIM_LUA}")));
pub(super) static PEEK: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{CLOCK_LUA}{LANES_LUA}{PICK_LUA}{PEEK_LUA}")));
pub(super) static DEPTH: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{CLOCK_LUA}{DEPTH_LUA}")));
pub(super) static SETTLE: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{CLOCK_LUA}{LANES_LUA}{SETTLE_LUA}")));
pub(super) static REPLAY: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{CLOCK_LUA}{LANES_LUA}{REPLAY_LUA}")));
pub(super) static RESCHEDULE: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{CLOCK_LUA}{LANES_LUA}{RESCHEDULE_LUA}")));
pub(super) static TAKE_TOKENS: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{CLOCK_LUA}{TAKE_TOKENS_LUA}")));
pub(super) static UNPARK: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{CLOCK_LUA}{LANES_LUA}{UNPARK_LUA}")));
pub(super) static EXPIRE_DEAD: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{CLOCK_LUA}{EXPIRE_DEAD_LUA}")));
pub(super) static FILE_LANES: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{LANES_LUA}{FILE_LANES_LUA}")));
pub(super) static FILE_DEAD: LazyLock<Script> = LazyLock::new(|| Script::new(FILE_DEAD_LUA));
pub(super) static SET_ENABLED: LazyLock<Script> = LazyLock::new(|| Script::new(SET_ENABLED_LUA));
pub(super) static RECORD_HEALTH: LazyLock<Script> = LazyLock::new(|| Script::new(RECORD_HEALTH_LUA));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scripts_tolerance_is_the_documented_one() {
        assert!(CLOCK_LUA.contains(&format!("math.abs(d) < {} then", super::super::CLOCK_TOLERANCE_MS)));
    }
}
