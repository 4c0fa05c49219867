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
//! apply only while `ZSCORE due id` still equals it.
//!
//! Claims are fair between owners. Each shard's `due` is mirrored by one
//! lane per owner (the tenant owning a delivery's subscription, or the
//! operator), and [`lanes_key`] scores each lane by its turn (its oldest
//! entry, or just after a claim last served it, if later). A claim lets
//! the owners with something due take turns, each its oldest first, then
//! fills what is left of its batch with the oldest due, ties
//! broken by id (as the embedded store does). So one tenant's backlog of
//! 200,000 due deliveries costs another tenant's new delivery one turn,
//! not the backlog's drain time. Every script that changes `due` changes
//! the lane in the same run.
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

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use ::redis::{Script, Value};

use super::{
    Claim, Claimed, DeadScope, Delivery, DeliveryId, Depth, Enqueued, Error, Expired, HealthUpdate, Lease, Millis,
    NewEvent, Queue, Settlement, Standing, StateStore, SubscriptionState,
};
use crate::config::{QueueConfig, SubscriptionName};
use crate::model::TenantId;

pub(crate) mod link;
mod scripts;

use link::{Call, Failed, Redis};
use scripts::{
    CLAIM, DEPTH, ENQUEUE, EXPIRE_DEAD, FILE_DEAD, FILE_LANES, PEEK, RECORD_HEALTH, REPLAY, RESCHEDULE, SETTLE,
    SET_ENABLED, TAKE_TOKENS, UNPARK,
};

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

/// `{prefix}:{N}:lanes`, a sorted set: member = a lane (the tenant owning a
/// delivery's subscription, or `''` for the operator's), score = its turn:
/// the lowest score in its lane, or 1 ms after a claim last served it if
/// later (kept in the hash `{prefix}:{N}:lanes_served`, lane → ms). Each
/// lane is the sorted set `{prefix}:{N}:lanes:<lane>`, which mirrors the
/// lane's part of `due` (same members, same scores), so a claim can let
/// owners take turns. Written with `due`, in the same script: enqueue,
/// claim, settle, replay, reschedule and unpark.
pub fn lanes_key(prefix: &str, shard: u16) -> String {
    format!("{prefix}:{{{shard}}}:lanes")
}

/// `{prefix}:{N}:lanes_filed`, a string: set once every delivery the shard
/// held in `due` when lanes came in is filed in its lane. Written by
/// [`RedisQueue::connect`].
pub fn lanes_filed_key(prefix: &str, shard: u16) -> String {
    format!("{prefix}:{{{shard}}}:lanes_filed")
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
        queue.file_unlaned_due().await?;
        Ok(queue)
    }

    /// Files the dead deliveries of every shard not yet marked
    /// [`dead_by_filed_key`] under their scopes (a store written before the
    /// indexes; every delivery that dies later is filed as it dies).
    async fn file_unfiled_dead(&self) -> Result<(), Error> {
        let filed = self
            .file_once("dead index", &FILE_DEAD, dead_by_filed_key, |s, from, batch| {
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
                call.arg(batch);
                call
            })
            .await?;
        for (shard, dead) in filed {
            tracing::info!(
                shard,
                dead,
                "filed the dead deliveries of an older store by subscription and owner"
            );
        }
        Ok(())
    }

    /// Files the due deliveries of every shard not yet marked
    /// [`lanes_filed_key`] in their lanes (a store written before lanes;
    /// every delivery made due later is filed as it is). A delivery that a
    /// claim finds in `due` but in no lane (one an older hookd made due
    /// meanwhile) is still claimed, after the lanes' turns.
    async fn file_unlaned_due(&self) -> Result<(), Error> {
        let filed = self
            .file_once("lanes", &FILE_LANES, lanes_filed_key, |s, from, batch| {
                let mut call = Call {
                    keys: vec![
                        due_key(&self.prefix, s),
                        owner_key(&self.prefix, s),
                        lanes_key(&self.prefix, s),
                        lanes_filed_key(&self.prefix, s),
                    ],
                    args: Vec::new(),
                };
                call.arg(from);
                call.arg(batch);
                call
            })
            .await?;
        for (shard, due) in filed {
            tracing::info!(shard, due, "filed the due deliveries of an older store by owner");
        }
        Ok(())
    }

    /// Runs a one-time filing `script` over every shard whose `marker` key
    /// is not set, in batches: `call(shard, from, batch)` reads `batch`
    /// from rank `from`, and the script answers how many it read, or -1
    /// once done (setting the marker). Idempotent, so processes starting
    /// together may both run it. Returns each shard that had anything
    /// filed, with how many.
    async fn file_once(
        &self,
        what: &'static str,
        script: &'static Script,
        marker: fn(&str, u16) -> String,
        call: impl Fn(u16, u64, u64) -> Call,
    ) -> Result<Vec<(u16, u64)>, Error> {
        const BATCH: u64 = 500;
        let marks = (0..self.shards)
            .map(|s| {
                let mut cmd = ::redis::cmd("EXISTS");
                cmd.arg(marker(&self.prefix, s));
                vec![cmd]
            })
            .collect();
        let marks = self.redis.per_shard(what, marks).await?;
        let mut filed = Vec::new();
        for (s, mark) in (0..self.shards).zip(marks) {
            if mark.first().map(int_of).transpose()? == Some(1) {
                continue;
            }
            let mut from = 0u64;
            loop {
                let read = self.redis.eval(what, script, vec![call(s, from, BATCH)]).await?;
                match read.first().map(int_of).transpose()? {
                    Some(n) if n > 0 => from += n as u64,
                    _ => break,
                }
            }
            if from > 0 {
                filed.push((s, from));
            }
        }
        Ok(filed)
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

    /// A shard's keys as the claim and peek scripts take them.
    fn claim_keys(&self, s: u16) -> [String; 4] {
        [
            due_key(&self.prefix, s),
            records_key(&self.prefix, s),
            owner_key(&self.prefix, s),
            lanes_key(&self.prefix, s),
        ]
    }

    fn claim_call(&self, shards: &[u16], now: Millis, lease: Millis, max: usize) -> Call {
        let mut call = Call::default();
        for &s in shards {
            call.keys.extend(self.claim_keys(s));
        }
        call.arg(now);
        call.arg(self.wall());
        call.arg(lease);
        call.arg(max);
        call
    }

    /// On a cluster: peeks at what each shard's claim would pick, lets the
    /// owners take turns over all shards as one shard's claim does (see
    /// [`turns`]), then claims from each shard as many of each owner's as
    /// the turns gave it (the oldest due of each then, which another
    /// process's claim may have moved on from: never the same delivery).
    async fn claim_cluster(&self, order: &[u16], now: Millis, lease: Millis, max: usize) -> Result<ClaimReply, Error> {
        let peeks = order
            .iter()
            .map(|&s| {
                let mut call = Call {
                    keys: self.claim_keys(s).to_vec(),
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
            let found = match reply.next().unwrap_or(Value::Nil) {
                Value::Array(found) => found,
                Value::Nil => Vec::new(),
                other => return Err(unexpected("the peek script's candidates", &other)),
            };
            let mut found = found.into_iter();
            while let (Some(id), Some(score), Some(owner), Some(turn)) =
                (found.next(), found.next(), found.next(), found.next())
            {
                candidates.push(Candidate {
                    score: score_of(&score)?,
                    id: text(id)?,
                    owner: text(owner)?,
                    turn: score_of(&turn)?,
                    position,
                });
            }
            if let Some(head) = optional_score(reply.next().unwrap_or(Value::Nil))? {
                next_due = Some(next_due.map_or(head, |n| n.min(head)));
            }
        }
        if candidates.is_empty() {
            return Ok((Vec::new(), next_due));
        }
        // Per shard, how many of each owner's the turns took; an owner
        // served anywhere is marked served in every shard it had
        // candidates in (a quota of 0), so its turn moves on in all of them.
        let mut had: Vec<(String, usize)> = candidates.iter().map(|c| (c.owner.clone(), c.position)).collect();
        had.sort_unstable();
        had.dedup();
        let mut quotas: Vec<Vec<(String, usize)>> = vec![Vec::new(); order.len()];
        let taken = turns(candidates, max);
        let served: HashSet<&str> = taken.iter().map(|c| c.owner.as_str()).collect();
        for (owner, position) in &had {
            if served.contains(owner.as_str()) {
                quotas[*position].push((owner.clone(), 0));
            }
        }
        for candidate in &taken {
            if let Some((_, n)) = quotas[candidate.position]
                .iter_mut()
                .find(|(owner, _)| *owner == candidate.owner)
            {
                *n += 1;
            }
        }
        let calls: Vec<Call> = quotas
            .iter()
            .enumerate()
            .filter(|(_, quota)| !quota.is_empty())
            .map(|(position, quota)| {
                let n = quota.iter().map(|(_, n)| n).sum();
                let mut call = self.claim_call(&order[position..=position], now, lease, n);
                for (owner, n) in quota {
                    call.arg(owner);
                    call.arg(n);
                }
                call
            })
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

/// A delivery a shard's claim would take, as the peek script reports it.
struct Candidate {
    /// Its due time, in Redis's clock.
    score: f64,
    id: String,
    /// Its lane: the owning tenant, or `""`.
    owner: String,
    /// Its owner's turn in the shard (see the claim script's `pick`).
    turn: f64,
    /// Its shard's position in the claim's shard order.
    position: usize,
}

/// Up to `max` of `candidates`, the owners taking turns as the claim
/// script's `pick` has them do within a shard: owners in the order of
/// their earliest turn over all shards (ties by owner), each handing over
/// its oldest in turn, at most `ceil(max / owners)` each, the rest of
/// `max` to the oldest left.
fn turns(mut candidates: Vec<Candidate>, max: usize) -> Vec<Candidate> {
    let mut first_turn: HashMap<String, f64> = HashMap::new();
    for c in &candidates {
        let turn = first_turn.entry(c.owner.clone()).or_insert(c.turn);
        *turn = turn.min(c.turn);
    }
    candidates.sort_by(|a, b| {
        let (ta, tb) = (first_turn[&a.owner], first_turn[&b.owner]);
        ta.total_cmp(&tb)
            .then_with(|| a.owner.cmp(&b.owner))
            .then_with(|| a.score.total_cmp(&b.score))
            .then_with(|| a.id.cmp(&b.id))
    });
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut owners: Vec<VecDeque<Candidate>> = Vec::new();
    for candidate in candidates {
        match index.get(&candidate.owner) {
            Some(&i) => owners[i].push_back(candidate),
            None => {
                index.insert(candidate.owner.clone(), owners.len());
                owners.push([candidate].into());
            }
        }
    }
    owners.truncate(max);
    let share = max.div_ceil(owners.len().max(1));
    let mut out = Vec::with_capacity(max);
    for _ in 0..share {
        for queue in &mut owners {
            if out.len() == max {
                break;
            }
            if let Some(candidate) = queue.pop_front() {
                out.push(candidate);
            }
        }
    }
    let mut rest: Vec<Candidate> = owners.into_iter().flatten().collect();
    rest.sort_by(|a, b| a.score.total_cmp(&b.score).then_with(|| a.id.cmp(&b.id)));
    out.extend(rest.into_iter().take(max - out.len()));
    out
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
                    call.keys.push(lanes_key(&self.prefix, s));
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
        let (mut claims, next_due) = if self.redis.is_cluster() {
            self.claim_cluster(&order, now, lease, max).await?
        } else {
            let call = self.claim_call(&order, now, lease, max);
            let reply = self
                .redis
                .eval("claim", &CLAIM, vec![call])
                .await?
                .pop()
                .unwrap_or(Value::Nil);
            claim_reply(reply)?
        };
        // Oldest first, whatever turn took them, as on the embedded store.
        claims.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.delivery.id.cmp(&b.0.delivery.id)));
        let claims: Vec<Claim> = claims.into_iter().map(|(claim, _)| claim).collect();
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
                    call.keys.push(lanes_key(&self.prefix, s));
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
            keys: vec![
                due_key(&self.prefix, s),
                owner_key(&self.prefix, s),
                lanes_key(&self.prefix, s),
            ],
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
                lanes_key(&self.prefix, s),
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
                        call.keys.push(owner_key(&self.prefix, s));
                        call.keys.push(lanes_key(&self.prefix, s));
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
