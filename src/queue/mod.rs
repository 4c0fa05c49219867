//! The queue: where deliveries wait until they are due, behind one trait.
//!
//! A delivery is the unit that is queued, claimed, retried and logged: one
//! per (event, matching subscription). Two backends implement [`Queue`]
//! with the same semantics, checked by one conformance suite
//! (`tests/queue_conformance.rs`):
//!
//! - [`redis::RedisQueue`]: sorted sets scored by due time, shared by every
//!   hookd process pointed at the same Redis or Redis Cluster;
//! - [`embedded::EmbeddedQueue`]: a durable store on local disk (redb), the
//!   zero-setup default for one process.
//!
//! ## Semantics every backend keeps
//!
//! - [`Queue::enqueue`] records an event id (or the event's own dedup
//!   key, [`NewEvent::dedup_key`]) as seen and enqueues its deliveries
//!   atomically: both happen or neither, so an event is never marked seen
//!   without its deliveries (which would lose it) nor enqueued twice within
//!   the dedup window.
//! - [`Queue::claim`] hands out due deliveries and pushes their due time to
//!   `now + lease`. A worker that dies mid-delivery loses nothing: its
//!   claims fall due again when the lease runs out (at least once).
//! - The claim's due time is its [`Lease`] token. A settlement applies only
//!   while the delivery still carries that token, so a worker whose lease
//!   ran out cannot undo what the next claimant did.
//! - Claims go in order of due time, ties broken by [`DeliveryId`].
//! - [`Settlement::Park`] moves a claimed delivery of a disabled
//!   subscription aside, out of the due order, into its subscription's
//!   parked set ordered by (`created_at`, id); [`Queue::unpark`] puts them
//!   all back, due at their `created_at`, so they are claimed oldest first,
//!   before anything enqueued after them. A delivery is in exactly one of
//!   due, parked or dead; settlements only touch due ones.
//! - Every subscription has a [`SubscriptionState`] (enabled or not, why,
//!   since when, and its failure health) stored in the backend, so every
//!   process sharing the queue sees the same one and it survives restarts.
//! - A subscription's rate limit is one token bucket per backend
//!   ([`Queue::take_tokens`], [`rate`]), shared by every process using it.

pub mod embedded;
pub mod rate;
pub mod redis;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::model::{now_ms, Delivery, DeliveryId, Millis};
use crate::model::{EventId, SubscriptionName};

/// A queue backend failure.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// Redis refused or could not be reached.
    #[error("redis: {0}")]
    Redis(String),
    /// The embedded store failed.
    #[error("embedded store: {0}")]
    Store(String),
    /// A stored record could not be decoded.
    #[error("delivery record {id} is corrupt: {reason}")]
    Corrupt { id: String, reason: String },
    /// The embedded store's directory is locked by another process.
    #[error("{} is in use by another hookd process: stop it, or point queue.data_dir elsewhere", dir.display())]
    InUse { dir: std::path::PathBuf },
    /// The caller asked for something the queue cannot store as given.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A subscription's stored state could not be decoded.
    #[error(
        "stored state of subscription {subscription} is corrupt: {reason}; \
         enable or disable it again to rewrite it"
    )]
    CorruptState {
        /// The subscription (or the stored key, if the name itself is bad).
        subscription: String,
        /// What was wrong with it.
        reason: String,
    },
}

impl From<crate::model::CorruptRecord> for Error {
    fn from(e: crate::model::CorruptRecord) -> Error {
        Error::Corrupt {
            id: e.id,
            reason: e.reason,
        }
    }
}

/// The shard an event's deliveries live in: FNV-1a of its id.
pub fn shard_of(event_id: &EventId, shards: u16) -> u16 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in event_id.as_str().bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash % u32::from(shards.max(1))) as u16
}

/// Longest [`NewEvent::dedup_key`] accepted, in bytes.
pub const MAX_DEDUP_KEY: usize = 512;

/// An event and its deliveries, to enqueue together.
#[derive(Clone, Debug)]
pub struct NewEvent {
    /// The event's id.
    pub event_id: EventId,
    /// What dedup remembers instead of the event id, if set: a replay of
    /// an event uses `{event_id}/replay/{key}` so that it is not refused as
    /// a repeat of the event itself. Kept in the event's shard, like the
    /// event id would be. `None`: the event id is the dedup key.
    pub dedup_key: Option<String>,
    /// One delivery per matching subscription; all in `shard_of(event_id)`.
    /// May be empty: the event is still recorded as seen.
    pub deliveries: Vec<Delivery>,
}

impl NewEvent {
    /// The key dedup remembers: [`NewEvent::dedup_key`] if set, the event
    /// id otherwise.
    pub fn dedup_key(&self) -> &str {
        self.dedup_key.as_deref().unwrap_or(self.event_id.as_str())
    }

    /// The event's shard, after checking that every delivery lives in it
    /// (backends store a delivery where its id says, and dedup per shard)
    /// and that a dedup key of its own is 1 to [`MAX_DEDUP_KEY`] bytes.
    pub fn shard(&self, shards: u16) -> Result<u16, Error> {
        if let Some(key) = &self.dedup_key {
            if key.is_empty() || key.len() > MAX_DEDUP_KEY {
                return Err(Error::Invalid(format!(
                    "the dedup key of event {} is {} bytes; it must be 1 to {MAX_DEDUP_KEY}",
                    self.event_id,
                    key.len()
                )));
            }
        }
        let shard = shard_of(&self.event_id, shards);
        match self.deliveries.iter().find(|d| d.id.shard() != shard) {
            None => Ok(shard),
            Some(d) => Err(Error::Invalid(format!(
                "delivery {} of event {} is in shard {}, but the event is in shard {shard} of {shards}: \
                 make delivery ids with DeliveryId::new(shard_of(event_id, queue.shards))",
                d.id,
                self.event_id,
                d.id.shard()
            ))),
        }
    }
}

/// What [`Queue::enqueue`] did with one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enqueued {
    /// First sighting: its deliveries are queued, due now.
    Accepted,
    /// Seen within the dedup window: nothing was queued.
    Duplicate,
}

/// The fencing token of a claim: the due time the claim set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease(pub Millis);

/// A claimed delivery and its lease.
#[derive(Clone, Debug)]
pub struct Claim {
    /// The delivery, as stored.
    pub delivery: Delivery,
    /// The token settlements must present.
    pub lease: Lease,
}

/// The result of one [`Queue::claim`].
#[derive(Clone, Debug, Default)]
pub struct Claimed {
    /// Due deliveries, oldest due first, now leased to the caller.
    pub claims: Vec<Claim>,
    /// When the next delivery falls due, if any is queued and none was
    /// claimed (so the caller knows how long it may sleep).
    pub next_due: Option<Millis>,
}

/// What to do with a claimed delivery.
#[derive(Clone, Debug)]
pub enum Settlement {
    /// Delivered (or finished otherwise): remove it.
    Ack { id: DeliveryId, lease: Lease },
    /// Attempted and failed: store the updated record, due again at `due`.
    Retry {
        delivery: Delivery,
        lease: Lease,
        due: Millis,
    },
    /// Give it back unattempted, due again at `due` (a full subscription).
    Defer { id: DeliveryId, lease: Lease, due: Millis },
    /// Failed for good: store the updated record among the dead.
    Dead { delivery: Delivery, lease: Lease },
    /// Its subscription is disabled: move it out of the due order into the
    /// subscription's parked set (ordered by `created_at`, then id), record
    /// kept, until [`Queue::unpark`].
    Park { id: DeliveryId, lease: Lease },
}

impl Settlement {
    /// The delivery this settles.
    pub fn id(&self) -> &DeliveryId {
        match self {
            Settlement::Ack { id, .. } | Settlement::Defer { id, .. } | Settlement::Park { id, .. } => id,
            Settlement::Retry { delivery, .. } | Settlement::Dead { delivery, .. } => &delivery.id,
        }
    }
}

/// Where a stored delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Standing {
    /// Queued, due (or leased until) `due`.
    Pending { due: Millis },
    /// Failed for good at `since`; kept until replayed.
    Dead { since: Millis },
    /// Set aside at `since` because its subscription is disabled; kept
    /// until the subscription's deliveries are unparked.
    Parked { since: Millis },
}

/// How many deliveries wait where.
///
/// A leased delivery's due time is its lease's end, so until then it counts
/// as `scheduled`; it is `due` again once the lease runs out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Depth {
    /// Due now (including leases that ran out).
    pub due: u64,
    /// Waiting for a later due time (retries, deferrals and live leases).
    pub scheduled: u64,
    /// Dead, kept for replay.
    pub dead: u64,
    /// Parked: their subscription is disabled (every subscription summed).
    pub parked: u64,
}

/// Whether a subscription is enabled, and how its endpoint has been doing.
///
/// One per subscription, stored in the queue backend so that every process
/// sharing it sees the same and it survives restarts. The queue only
/// records; deciding to disable (thresholds) is the dispatcher's job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionState {
    /// Whether deliveries are sent; false parks them.
    pub enabled: bool,
    /// Why it was last disabled or enabled, if a reason was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When `enabled` last changed (0: never).
    pub since: Millis,
    /// Failed attempts since the last success (reset by a success, and on
    /// enabling).
    pub consecutive_failures: u64,
    /// When the current run of failures started, if one is under way
    /// (cleared by a success, and on enabling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<Millis>,
    /// When an attempt last succeeded, if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_at: Option<Millis>,
    /// When an attempt last failed, if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_at: Option<Millis>,
}

impl Default for SubscriptionState {
    /// Enabled, never changed, no attempts recorded.
    fn default() -> SubscriptionState {
        SubscriptionState {
            enabled: true,
            reason: None,
            since: 0,
            consecutive_failures: 0,
            failing_since: None,
            last_success_at: None,
            last_failure_at: None,
        }
    }
}

impl SubscriptionState {
    /// Enables or disables at `now`, keeping `reason`; enabling also resets
    /// the failure counters. A state that already is `enabled` is left as it
    /// is (reason and `since` included). Returns whether it changed.
    ///
    /// The rule both backends apply; the Redis backend's script mirrors it.
    pub fn set_enabled(&mut self, enabled: bool, reason: Option<String>, now: Millis) -> bool {
        if self.enabled == enabled {
            return false;
        }
        self.enabled = enabled;
        self.reason = reason;
        self.since = now;
        if enabled {
            self.consecutive_failures = 0;
            self.failing_since = None;
        }
        true
    }

    /// Applies one settle batch's outcomes (see [`HealthUpdate`] for the
    /// rules). The rule both backends apply; the Redis backend's script
    /// mirrors it.
    pub fn apply(&mut self, update: &HealthUpdate) {
        if update.last_outcome_success {
            self.consecutive_failures = 0;
            self.failing_since = None;
        } else if update.failures > 0 {
            if update.successes > 0 {
                // A success earlier in the batch ended the previous run.
                self.consecutive_failures = u64::from(update.failures);
                self.failing_since = update.last_failure_at;
            } else {
                self.consecutive_failures = self.consecutive_failures.saturating_add(u64::from(update.failures));
                self.failing_since = self.failing_since.or(update.last_failure_at);
            }
        }
        self.last_success_at = self.last_success_at.max(update.last_success_at);
        self.last_failure_at = self.last_failure_at.max(update.last_failure_at);
    }
}

/// One settle batch's attempt outcomes for one subscription, for
/// [`Queue::record_health`].
///
/// Applied atomically per subscription:
/// - the batch ended in a success (`last_outcome_success`): the run of
///   failures is over: `consecutive_failures = 0`, `failing_since = None`
///   (failures before that success don't count);
/// - it ended in a failure and held no success: `consecutive_failures +=
///   failures`, and `failing_since` is set to `last_failure_at` if no run
///   was under way;
/// - it ended in a failure after a success: a new run started within the
///   batch: `consecutive_failures = failures`, `failing_since =
///   last_failure_at`;
/// - `last_success_at` and `last_failure_at` only move forward (batches of
///   several processes may arrive out of order).
///
/// The batch's first failure time is not reported, so a run that starts in
/// a batch is dated by its last failure: early by at most one batch's span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthUpdate {
    /// Whose attempts these were.
    pub subscription: SubscriptionName,
    /// Successful attempts in the batch.
    pub successes: u32,
    /// Failed attempts in the batch; when the batch also holds a success,
    /// only those after its last success (the ones in the current run).
    pub failures: u32,
    /// Whether the batch's last attempt succeeded.
    pub last_outcome_success: bool,
    /// When the batch's last success happened; required if `successes > 0`.
    pub last_success_at: Option<Millis>,
    /// When the batch's last failure happened; required if `failures > 0`.
    pub last_failure_at: Option<Millis>,
}

impl HealthUpdate {
    /// Refuses an update whose fields contradict each other, so both
    /// backends only ever apply consistent ones.
    pub fn check(&self) -> Result<(), Error> {
        let bad = |what: &str| {
            Err(Error::Invalid(format!(
                "health update of subscription {}: {what}",
                self.subscription
            )))
        };
        if self.successes > 0 && self.last_success_at.is_none() {
            return bad("successes > 0 needs last_success_at");
        }
        if self.failures > 0 && self.last_failure_at.is_none() {
            return bad("failures > 0 needs last_failure_at");
        }
        if self.last_outcome_success && self.successes == 0 {
            return bad("last_outcome_success needs successes > 0");
        }
        if !self.last_outcome_success && self.failures == 0 && self.successes > 0 {
            return bad("a batch of only successes must set last_outcome_success");
        }
        Ok(())
    }
}

/// A queue backend. Every method is safe to call from many tasks and, for
/// shared backends, many processes.
#[async_trait::async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Marks each event's dedup key ([`NewEvent::dedup_key`]: its id unless
    /// it has a key of its own) seen for `window` and queues its deliveries
    /// due now, atomically per event; a key already seen within the window
    /// is answered [`Enqueued::Duplicate`] and queues nothing. Results are
    /// in the order of `events`.
    async fn enqueue(&self, events: &[NewEvent], window: Duration) -> Result<Vec<Enqueued>, Error>;

    /// Claims up to `max` deliveries due at `now`, leasing each until
    /// `now + lease`.
    async fn claim(&self, now: Millis, lease: Duration, max: usize) -> Result<Claimed, Error>;

    /// Applies settlements. One whose lease no longer matches (the lease ran
    /// out and someone else claimed the delivery) is skipped.
    async fn settle(&self, settlements: &[Settlement]) -> Result<(), Error>;

    /// A delivery and where it stands, if it is still queued or dead.
    async fn get(&self, id: &DeliveryId) -> Result<Option<(Delivery, Standing)>, Error>;

    /// Dead deliveries, most recent first, at most `limit`.
    async fn dead(&self, limit: usize) -> Result<Vec<Delivery>, Error>;

    /// Dead deliveries in order of death, oldest first (ties by id), each
    /// with when it died: at most `limit`, starting strictly after the
    /// position `after` (the death time and id of the last one a previous
    /// call returned). Walking with it visits every delivery dead when the
    /// walk started exactly once, whatever is replayed or dies meanwhile:
    /// a delivery that dies again gets a later position.
    async fn dead_after(
        &self,
        after: Option<(Millis, &DeliveryId)>,
        limit: usize,
    ) -> Result<Vec<(Millis, Delivery)>, Error>;

    /// Moves a dead delivery back to the queue, due at `now`, its attempt
    /// count reset. False if it is not dead.
    async fn replay(&self, id: &DeliveryId, now: Millis) -> Result<bool, Error>;

    /// Moves a pending delivery due at `expected` to `due` (a retry pulled
    /// forward by an operator). Like a settlement, it applies only while the
    /// delivery still has that due time: false if it was claimed, settled,
    /// parked or moved since, so a delivery in flight is never sent twice.
    async fn reschedule(&self, id: &DeliveryId, expected: Lease, due: Millis) -> Result<bool, Error>;

    /// Counts of due, scheduled, dead and parked deliveries at `now`.
    async fn depth(&self, now: Millis) -> Result<Depth, Error>;

    /// Moves every parked delivery of `subscription` back to the queue, due
    /// at its `created_at` (or at `now` if that is earlier: a clock that
    /// ran ahead), so claims hand them out oldest first (ties by id) and
    /// ahead of anything enqueued after them. Returns how many moved. Works in bounded batches, so claims interleave; safe to call
    /// concurrently with claims, settlements and other unparks, from any
    /// process (each delivery moves once). Deliveries parked while it runs
    /// may stay parked: call it after enabling the subscription, so that no
    /// process parks its deliveries any more, and again if in doubt (it is
    /// cheap when nothing is parked).
    async fn unpark(&self, subscription: &SubscriptionName, now: Millis) -> Result<u64, Error>;

    /// The stored state of `subscription`; the default (enabled, nothing
    /// recorded) if none is stored.
    async fn subscription_state(&self, subscription: &SubscriptionName) -> Result<SubscriptionState, Error>;

    /// Every subscription with a stored state (one that was enabled,
    /// disabled or had health recorded), sorted by name.
    async fn subscription_states(&self) -> Result<Vec<(SubscriptionName, SubscriptionState)>, Error>;

    /// Enables or disables `subscription` at `now` with `reason`
    /// ([`SubscriptionState::set_enabled`]): enabling resets its failure
    /// counters; asking for the state it is already in changes nothing.
    /// Returns whether it changed.
    async fn set_enabled(
        &self,
        subscription: &SubscriptionName,
        enabled: bool,
        reason: Option<String>,
        now: Millis,
    ) -> Result<bool, Error>;

    /// Applies settle batches' outcomes to their subscriptions' health,
    /// atomically per subscription ([`HealthUpdate`]), in order, and returns
    /// each subscription's state right after its update (one entry per
    /// update). Refuses the whole call, changing nothing, if an update is
    /// inconsistent ([`HealthUpdate::check`]).
    async fn record_health(
        &self,
        updates: &[HealthUpdate],
    ) -> Result<Vec<(SubscriptionName, SubscriptionState)>, Error>;

    /// Takes up to `want` request tokens from `subscription`'s rate limit
    /// `limit` at `now` ([`rate::take`]), from one bucket shared by every
    /// process using this backend. The first `granted` of the caller's
    /// deliveries may be sent; the rest wait until `next_at`. A changed
    /// limit applies to the bucket as it stands.
    async fn take_tokens(
        &self,
        subscription: &SubscriptionName,
        limit: &crate::config::RateLimit,
        want: u32,
        now: Millis,
    ) -> Result<rate::Tokens, Error>;

    /// Checks that the backend answers.
    async fn ping(&self) -> Result<(), Error>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_ids_sort_in_creation_order() {
        let ids: Vec<DeliveryId> = (0..1000).map(|n| DeliveryId::new(n % 7)).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "ids made later sort later, whatever their shard"
        );
    }

    #[test]
    fn delivery_ids_carry_their_shard() {
        for shard in [0u16, 7, 255] {
            let id = DeliveryId::new(shard);
            assert_eq!(id.shard(), shard);
            assert_eq!(DeliveryId::parse(id.as_str()).unwrap(), id);
        }
        assert!(DeliveryId::parse("dlv_zz").is_err());
        assert!(DeliveryId::parse("evt_00000000000000000000000000000000000").is_err());
    }

    #[test]
    fn shards_spread_and_are_stable() {
        let ids: Vec<EventId> = (0..1000)
            .map(|n| EventId::parse(&format!("evt_{n}")).unwrap())
            .collect();
        let mut counts = [0u32; 8];
        for id in &ids {
            counts[usize::from(shard_of(id, 8))] += 1;
        }
        assert!(counts.iter().all(|&c| c > 80), "{counts:?}");
        assert_eq!(shard_of(&ids[3], 8), shard_of(&ids[3], 8));
    }

    fn update(successes: u32, failures: u32, last_ok: bool, at: Millis) -> HealthUpdate {
        HealthUpdate {
            subscription: SubscriptionName::parse("crm").unwrap(),
            successes,
            failures,
            last_outcome_success: last_ok,
            last_success_at: (successes > 0).then_some(at - 1),
            last_failure_at: (failures > 0).then_some(at),
        }
    }

    #[test]
    fn health_rules() {
        // (successes, failures, last outcome a success, time)
        type Batch = (u32, u32, bool, Millis);
        // (updates applied in turn, consecutive_failures, failing_since)
        let cases: &[(&[Batch], u64, Option<Millis>)] = &[
            (&[], 0, None),
            (&[(0, 3, false, 10)], 3, Some(10)),
            (&[(0, 3, false, 10), (0, 2, false, 20)], 5, Some(10)),
            (&[(0, 3, false, 10), (1, 2, true, 20)], 0, None),
            (&[(0, 3, false, 10), (1, 2, false, 20)], 2, Some(20)),
            (&[(2, 0, true, 10), (0, 1, false, 20)], 1, Some(20)),
        ];
        for (updates, failures, since) in cases {
            let mut state = SubscriptionState::default();
            for &(s, f, ok, at) in *updates {
                let u = update(s, f, ok, at);
                u.check().unwrap();
                state.apply(&u);
            }
            assert_eq!(state.consecutive_failures, *failures, "{updates:?}");
            assert_eq!(state.failing_since, *since, "{updates:?}");
        }
        let mut state = SubscriptionState::default();
        state.apply(&update(0, 1, false, 50));
        state.apply(&update(0, 1, false, 40));
        assert_eq!(state.last_failure_at, Some(50), "never moves back");
        assert!(update(1, 0, false, 5).check().is_err());
        assert!(update(0, 0, true, 5).check().is_err());
        let mut u = update(0, 1, false, 5);
        u.last_failure_at = None;
        assert!(u.check().is_err());
    }

    #[test]
    fn enabling_resets_the_counters_and_repeats_change_nothing() {
        let mut state = SubscriptionState::default();
        assert!(!state.set_enabled(true, None, 5));
        state.apply(&update(0, 4, false, 10));
        assert!(state.set_enabled(false, Some("failing".into()), 20));
        assert!(!state.set_enabled(false, Some("again".into()), 30));
        assert_eq!((state.reason.as_deref(), state.since), (Some("failing"), 20));
        assert_eq!(state.consecutive_failures, 4, "kept while disabled");
        assert!(state.set_enabled(true, None, 40));
        assert_eq!(state.consecutive_failures, 0);
        assert_eq!(state.failing_since, None);
        assert_eq!(state.last_failure_at, Some(10), "history is kept");
    }

    #[test]
    fn records_round_trip_with_binary_bodies() {
        let d = Delivery {
            id: DeliveryId::new(3),
            event_id: EventId::parse("evt_1").unwrap(),
            event_type: "coupon.redeemed".into(),
            subscription: SubscriptionName::parse("crm").unwrap(),
            created_at: 1,
            attempts: 2,
            body: bytes::Bytes::from_static(b"\x00\xffnot utf8"),
            last_error: Some("status 500".into()),
            headers: Some(vec![("x-plugin".into(), "1".into())]),
            tenant: None,
        };
        assert_eq!(Delivery::decode(d.id.as_str(), &d.encode()).unwrap(), d);
        let corrupt = Delivery::decode("x", b"{").unwrap_err();
        assert!(matches!(Error::from(corrupt), Error::Corrupt { id, .. } if id == "x"));
    }
}
