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
//! - Claims are fair between owners ([`Delivery::owner`], or the operator
//!   for the operator's subscriptions): of the owners with something due,
//!   at most `max`, each hands over its oldest due delivery in turn (the
//!   owner whose oldest is oldest first), up to `ceil(max / owners)` each;
//!   what is left of `max` goes to the oldest due not yet taken. What a
//!   claim takes is handed out in order of due time, ties broken by
//!   [`DeliveryId`]; of each owner, a claim takes its oldest due (on a
//!   cluster, where each shard takes its own turns, its oldest in each
//!   shard it takes from). Each backend keeps a per-owner index of what is due (lanes) in
//!   the same atomic write as each move of a delivery's due time.
//! - [`Settlement::Park`] moves a claimed delivery of a disabled
//!   subscription aside, out of the due order, into its subscription's
//!   parked set ordered by (`created_at`, id); [`Queue::unpark`] puts them
//!   all back, due at their `created_at`, so they are claimed oldest first,
//!   before anything enqueued after them. A delivery is in exactly one of
//!   due, parked or dead; settlements only touch due ones.
//! - Each backend counts, per tenant, the deliveries of that tenant's
//!   subscriptions that are not yet finished or dead
//!   ([`Queue::pending_of`]), in the same atomic write as each move that
//!   changes it: what `plans.max_pending` holds a tenant to.
//! - [`Queue::expire_dead`] forgets dead deliveries older than a cutoff
//!   (`queue.dead_retention`), in bounded batches; parked ones are kept
//!   however old, since an operator's enable resumes them.
//! - Beside the queue, each backend is a [`StateStore`]: every
//!   subscription's [`SubscriptionState`] (enabled or not, why, since when,
//!   and its failure health) and the rate buckets ([`rate`]), kept in the
//!   same Redis or redb file, so every process sharing the queue sees the
//!   same ones and they survive restarts. [`Backend`] holds both faces of
//!   one backend.
//!
//! Redis may lose what it holds (run without persistence, flushed, failed
//! over to a replica that lacked the last writes); [`epoch`] notices an
//! empty Redis while hookd runs and says what went with it.

pub mod embedded;
pub mod epoch;
pub mod rate;
pub mod redis;
pub mod state;

pub use state::{HealthUpdate, StateStore, SubscriptionState};

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::model::{now_ms, Delivery, DeliveryId, Millis};
use crate::model::{EventId, SubscriptionName, TenantId};

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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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

/// Whose dead deliveries a scoped listing reads ([`Queue::dead_in`],
/// [`Queue::dead_in_after`]): each backend indexes every dead delivery by
/// its subscription and by its owner, so a tenant's view reads its own
/// and nothing else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeadScope {
    /// One subscription's.
    Subscription(SubscriptionName),
    /// Those of every subscription a tenant owns ([`Delivery::owner`]).
    Owner(TenantId),
}

impl DeadScope {
    /// The scope as stored: `sub:<name>` or `owner:<tenant>` (neither a
    /// name nor a tenant id holds a `:`).
    pub fn key(&self) -> String {
        match self {
            DeadScope::Subscription(s) => format!("sub:{s}"),
            DeadScope::Owner(t) => format!("owner:{t}"),
        }
    }

    /// The scopes a delivery is indexed under once dead.
    pub fn of(delivery: &Delivery) -> Vec<DeadScope> {
        let mut scopes = vec![DeadScope::Subscription(delivery.subscription.clone())];
        if let Some(owner) = delivery.owner() {
            scopes.push(DeadScope::Owner(owner.clone()));
        }
        scopes
    }
}

/// What one [`Queue::expire_dead`] forgot.
#[derive(Clone, Debug, Default)]
pub struct Expired {
    /// How many dead deliveries were removed, corrupt records included.
    pub removed: u64,
    /// The removed deliveries whose records could be read, as they died.
    pub deliveries: Vec<Delivery>,
}

impl Expired {
    /// Decodes the removed (id, record) pairs; a corrupt record is counted,
    /// logged and left out (it is gone all the same).
    pub(crate) fn decode(raw: Vec<(String, Vec<u8>)>, removed: u64) -> Expired {
        let deliveries = raw
            .into_iter()
            .filter_map(|(id, record)| match Delivery::decode(&id, &record) {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::error!(delivery = %id, error = %e, "expired a dead delivery whose record is corrupt");
                    None
                }
            })
            .collect();
        Expired { removed, deliveries }
    }
}

/// One backend seen as its two stores: the delivery lifecycle and the
/// subscriptions' state (both kept in one Redis or one redb file).
#[derive(Clone)]
pub struct Backend {
    /// Deliveries: enqueue, claim, settle, dead, replay, park.
    pub queue: Arc<dyn Queue>,
    /// Subscription state, health and rate buckets.
    pub state: Arc<dyn StateStore>,
}

impl Backend {
    /// Both faces of `store`.
    pub fn new<T: Queue + StateStore>(store: Arc<T>) -> Backend {
        Backend {
            queue: store.clone(),
            state: store,
        }
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
    /// `now + lease`, the owners taking turns (see the module docs).
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

    /// [`Queue::dead`] within `scope`: the most recent first, reading that
    /// scope's index only, however many other dead deliveries there are.
    async fn dead_in(&self, scope: &DeadScope, limit: usize) -> Result<Vec<Delivery>, Error>;

    /// [`Queue::dead_after`] within `scope`: positions are the same (death
    /// time, id), and only deliveries of the scope are visited.
    async fn dead_in_after(
        &self,
        scope: &DeadScope,
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

    /// Forgets dead deliveries that died at or before `before`: at most
    /// `limit` in one call, oldest first within a shard, returned with
    /// their records as they died (so the caller can log them as expired).
    /// Fewer than `limit` removed means none is left. Parked deliveries
    /// are never touched. Safe beside replays from any process: a dead
    /// delivery is replayed or expired, never both.
    async fn expire_dead(&self, before: Millis, limit: usize) -> Result<Expired, Error>;

    /// Counts of due, scheduled, dead and parked deliveries at `now`.
    async fn depth(&self, now: Millis) -> Result<Depth, Error>;

    /// How many deliveries owned by `tenant` ([`Delivery::owner`]: those of
    /// its own subscriptions) are waiting, retrying, leased or parked: not
    /// dead. Kept as a count beside the deliveries, changed in the same
    /// atomic write as each move in or out of that set (enqueue, ack,
    /// death, replay), so reading it costs one lookup per shard, and every
    /// process sharing the backend reads the same number: what
    /// `plans.max_pending` is held against.
    async fn pending_of(&self, tenant: &TenantId) -> Result<u64, Error>;

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
            headers: Some(crate::model::PluginHeaders::Patch {
                set: vec![("x-plugin".into(), "1".into())],
                remove: vec!["x-team".into()],
            }),
            tenant: None,
        };
        assert_eq!(Delivery::decode(d.id.as_str(), &d.encode()).unwrap(), d);
        let corrupt = Delivery::decode("x", b"{").unwrap_err();
        assert!(matches!(Error::from(corrupt), Error::Corrupt { id, .. } if id == "x"));
    }
}
