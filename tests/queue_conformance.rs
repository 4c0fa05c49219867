//! One suite, written once against `dyn Queue`, run against every backend:
//! Redis (a real redis-server per test), Redis Cluster (one node owning all
//! slots) and the embedded store (a temp dir per test).

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hookd::config::{QueueConfig, RateLimit, SubscriptionName};
use hookd::ingest::EventId;
use hookd::model::TenantId;
use hookd::queue::embedded::EmbeddedQueue;
use hookd::queue::redis::RedisQueue;
use hookd::queue::{
    now_ms, shard_of, Backend, Claim, DeadScope, Delivery, DeliveryId, Depth, Enqueued, Error, HealthUpdate, Lease,
    Millis, NewEvent, Queue, Settlement, Standing, StateStore, SubscriptionState,
};
use support::{queue_config, unique_prefix, Home};

/// The dedup window of tests that do not wait for it to end.
const WINDOW: Duration = Duration::from_secs(3600);
/// The lease of tests that do not let it run out by the clock.
const LEASE: Duration = Duration::from_secs(60);
/// [`LEASE`] in ms.
const LEASE_MS: Millis = 60_000;

/// A backend under test.
struct Fixture {
    /// How to open the queue again.
    config: QueueConfig,
    /// Its data.
    home: Home,
    /// The open backend: its queue and its state store.
    queue: Option<Backend>,
}

impl Fixture {
    async fn open((config, home): (QueueConfig, Home)) -> Fixture {
        let mut fx = Fixture {
            config,
            home,
            queue: None,
        };
        fx.queue = Some(fx.connect().await);
        fx
    }

    async fn connect(&self) -> Backend {
        match self.home {
            Home::Redis(_) => Backend::new(Arc::new(
                RedisQueue::connect(&self.config)
                    .await
                    .expect("connect to the test redis"),
            )),
            Home::Embedded { .. } => Backend::new(Arc::new(
                EmbeddedQueue::open(&self.config).expect("open the embedded store"),
            )),
        }
    }

    fn q(&self) -> Arc<dyn Queue> {
        self.queue.as_ref().expect("queue is open").queue.clone()
    }

    /// The backend's state store.
    fn s(&self) -> Arc<dyn StateStore> {
        self.queue.as_ref().expect("queue is open").state.clone()
    }

    /// Closes the queue, restarts Redis (from its append-only file), and
    /// opens the queue again.
    async fn reopen(&mut self) {
        let backend = self.queue.take().expect("queue is open");
        // Its queue and its state store: two handles of one backend.
        assert_eq!(Arc::strong_count(&backend.queue), 2, "a test still holds the queue");
        drop(backend);
        self.home.restart();
        self.queue = Some(self.connect().await);
    }

    fn shards(&self) -> u16 {
        self.config.shards
    }
}

/// A delivery of `event` to `subscription`, placed in the event's shard.
fn delivery(event: &str, subscription: &str, shards: u16, body: &[u8]) -> Delivery {
    let event_id = EventId::parse(event).expect("valid event id");
    Delivery {
        id: DeliveryId::new(shard_of(&event_id, shards)),
        event_id,
        event_type: "coupon.redeemed".into(),
        subscription: SubscriptionName::parse(subscription).expect("valid name"),
        created_at: now_ms(),
        attempts: 0,
        body: Bytes::copy_from_slice(body),
        last_error: None,
        headers: None,
        tenant: None,
    }
}

/// An event with one delivery per subscription named.
fn event(id: &str, subscriptions: &[&str], shards: u16) -> NewEvent {
    NewEvent {
        event_id: EventId::parse(id).expect("valid event id"),
        dedup_key: None,
        deliveries: subscriptions
            .iter()
            .map(|s| delivery(id, s, shards, format!(r#"{{"event":"{id}","to":"{s}"}}"#).as_bytes()))
            .collect(),
    }
}

/// [`event`] of `tenant`: its deliveries to `sub_…` subscriptions are
/// that tenant's ([`Delivery::owner`]), the others the operator's.
fn tenant_event(id: &str, tenant: &TenantId, subscriptions: &[&str], shards: u16) -> NewEvent {
    let mut e = event(id, subscriptions, shards);
    for d in &mut e.deliveries {
        d.tenant = Some(tenant.clone());
    }
    e
}

/// Enqueues events of one delivery each, returning the deliveries.
async fn enqueue_singles(q: &dyn Queue, ids: &[String], shards: u16) -> Vec<Delivery> {
    let events: Vec<NewEvent> = ids.iter().map(|id| event(id, &["crm"], shards)).collect();
    let results = q.enqueue(&events, WINDOW).await.expect("enqueue");
    assert!(results.iter().all(|r| *r == Enqueued::Accepted), "{results:?}");
    events.into_iter().flat_map(|e| e.deliveries).collect()
}

/// Enqueues a backlog of 600 of acme's deliveries, then one of zeta's:
/// zeta's id.
async fn backlog_then_one(q: &dyn Queue, shards: u16) -> DeliveryId {
    let acme = TenantId::parse("acme").unwrap();
    let backlog: Vec<NewEvent> = (0..600)
        .map(|n| tenant_event(&format!("evt_backlog{n}"), &acme, &["sub_acme1"], shards))
        .collect();
    q.enqueue(&backlog, WINDOW).await.unwrap();
    let theirs = tenant_event("evt_zeta", &TenantId::parse("zeta").unwrap(), &["sub_zeta1"], shards);
    let id = theirs.deliveries[0].id.clone();
    q.enqueue(&[theirs], WINDOW).await.unwrap();
    id
}

/// Whether a claim of 10 now takes `id`.
async fn claims_in_ten(q: &dyn Queue, id: &DeliveryId) -> bool {
    let claims = q.claim(now_ms(), LEASE, 10).await.unwrap().claims;
    assert_eq!(claims.len(), 10);
    claims.iter().any(|c| c.delivery.id == *id)
}

fn ids_of(claims: &[Claim]) -> Vec<DeliveryId> {
    claims.iter().map(|c| c.delivery.id.clone()).collect()
}

/// The cases, each written once against `dyn Queue`.
mod cases {
    use super::*;

    pub async fn enqueue_then_claim_keeps_the_body(fx: &mut Fixture) {
        let q = fx.q();
        let mut e = event("evt_body", &["crm", "billing"], fx.shards());
        e.deliveries[0].body = Bytes::from_static(b"\x00\xff\xfe not utf-8 \r\n{\"a\":1}");
        let results = q.enqueue(std::slice::from_ref(&e), WINDOW).await.unwrap();
        assert_eq!(results, vec![Enqueued::Accepted]);

        let claimed = q.claim(now_ms(), LEASE, 10).await.unwrap();
        assert_eq!(claimed.claims.len(), 2);
        assert_eq!(claimed.next_due, None);
        for want in &e.deliveries {
            let got = claimed
                .claims
                .iter()
                .find(|c| c.delivery.id == want.id)
                .expect("claimed");
            assert_eq!(&got.delivery, want, "the stored record is what was enqueued");
        }
    }

    pub async fn duplicates_within_the_window_queue_nothing(fx: &mut Fixture) {
        let q = fx.q();
        let first = event("evt_dup", &["crm"], fx.shards());
        let again = event("evt_dup", &["crm"], fx.shards());
        assert_eq!(q.enqueue(&[first], WINDOW).await.unwrap(), vec![Enqueued::Accepted]);
        assert_eq!(
            q.enqueue(std::slice::from_ref(&again), WINDOW).await.unwrap(),
            vec![Enqueued::Duplicate]
        );
        // Within one batch too, and results keep the batch's order.
        let fresh = event("evt_dup_2", &["crm"], fx.shards());
        let results = q.enqueue(&[again.clone(), fresh.clone(), fresh], WINDOW).await.unwrap();
        assert_eq!(
            results,
            vec![Enqueued::Duplicate, Enqueued::Accepted, Enqueued::Duplicate]
        );

        assert_eq!(q.get(&again.deliveries[0].id).await.unwrap(), None);
        let depth = q.depth(now_ms()).await.unwrap();
        assert_eq!(depth.due, 2, "one delivery per accepted event: {depth:?}");
    }

    pub async fn ids_are_accepted_again_after_the_window(fx: &mut Fixture) {
        let q = fx.q();
        let window = Duration::from_millis(200);
        let first = event("evt_window", &["crm"], fx.shards());
        let second = event("evt_window", &["crm"], fx.shards());
        assert_eq!(q.enqueue(&[first], window).await.unwrap(), vec![Enqueued::Accepted]);
        assert_eq!(
            q.enqueue(std::slice::from_ref(&second), window).await.unwrap(),
            vec![Enqueued::Duplicate]
        );
        tokio::time::sleep(window + Duration::from_millis(50)).await;
        assert_eq!(q.enqueue(&[second], window).await.unwrap(), vec![Enqueued::Accepted]);
        assert_eq!(q.depth(now_ms()).await.unwrap().due, 2);
    }

    pub async fn events_without_deliveries_are_remembered(fx: &mut Fixture) {
        let q = fx.q();
        let empty = event("evt_nobody", &[], fx.shards());
        assert_eq!(
            q.enqueue(std::slice::from_ref(&empty), WINDOW).await.unwrap(),
            vec![Enqueued::Accepted]
        );
        assert_eq!(q.enqueue(&[empty], WINDOW).await.unwrap(), vec![Enqueued::Duplicate]);
        assert_eq!(q.depth(now_ms()).await.unwrap(), Depth::default());
        let claimed = q.claim(now_ms(), LEASE, 10).await.unwrap();
        assert!(claimed.claims.is_empty());
        assert_eq!(claimed.next_due, None, "nothing is queued at all");
    }

    pub async fn dedup_keys_of_their_own_dedup_apart_from_event_ids(fx: &mut Fixture) {
        let q = fx.q();
        let shards = fx.shards();
        let keyed = |id: &str, key: &str| NewEvent {
            dedup_key: Some(format!("{id}/replay/{key}")),
            ..event(id, &["crm", "billing"], shards)
        };
        let original = event("evt_keyed", &["crm"], shards);
        assert_eq!(q.enqueue(&[original], WINDOW).await.unwrap(), vec![Enqueued::Accepted]);
        // Same event id, a key of its own: not a repeat of the event.
        let first = keyed("evt_keyed", "a");
        assert_eq!(
            q.enqueue(std::slice::from_ref(&first), WINDOW).await.unwrap(),
            vec![Enqueued::Accepted]
        );
        // The same key again is a repeat, alone or within a batch; another key is not.
        assert_eq!(
            q.enqueue(&[keyed("evt_keyed", "a")], WINDOW).await.unwrap(),
            vec![Enqueued::Duplicate]
        );
        let results = q
            .enqueue(
                &[
                    keyed("evt_keyed", "b"),
                    keyed("evt_keyed", "b"),
                    event("evt_keyed", &["crm"], shards),
                ],
                WINDOW,
            )
            .await
            .unwrap();
        assert_eq!(
            results,
            vec![Enqueued::Accepted, Enqueued::Duplicate, Enqueued::Duplicate]
        );
        // A key of its own does not mark the event id seen either.
        let before = keyed("evt_keyed_2", "x");
        assert_eq!(q.enqueue(&[before], WINDOW).await.unwrap(), vec![Enqueued::Accepted]);
        let plain = event("evt_keyed_2", &["crm"], shards);
        assert_eq!(q.enqueue(&[plain], WINDOW).await.unwrap(), vec![Enqueued::Accepted]);

        assert_eq!(q.depth(now_ms()).await.unwrap().due, 1 + 2 + 2 + 2 + 1);
        let (stored, _) = q.get(&first.deliveries[1].id).await.unwrap().expect("queued");
        assert_eq!(stored, first.deliveries[1], "the record keeps the event id");

        for bad in [String::new(), "k".repeat(hookd::queue::MAX_DEDUP_KEY + 1)] {
            let e = NewEvent {
                dedup_key: Some(bad.clone()),
                ..event("evt_keyed_3", &["crm"], shards)
            };
            match q.enqueue(&[e], WINDOW).await {
                Err(Error::Invalid(message)) => assert!(message.contains("dedup key"), "{message}"),
                other => panic!("a dedup key of {} bytes was not refused: {other:?}", bad.len()),
            }
        }
    }

    /// Owners take turns: one tenant's backlog never holds up another
    /// owner's deliveries, however they came to be due (enqueued,
    /// retried, unparked, replayed, rescheduled, after a restart), and the
    /// backlog itself is still claimed, every delivery once.
    pub async fn claims_let_owners_take_turns(fx: &mut Fixture) {
        /// One claim of 10 at `now`: full, since the backlog is deep, and
        /// zeta's delivery if it is in it.
        async fn turn(q: &dyn Queue, now: Millis, zeta: &DeliveryId) -> (Vec<Claim>, Option<Claim>) {
            let claims = q.claim(now, LEASE, 10).await.unwrap().claims;
            assert_eq!(claims.len(), 10, "the backlog fills the batch");
            let mine = claims.iter().find(|c| c.delivery.id == *zeta).cloned();
            (claims, mine)
        }
        let acme = TenantId::parse("acme").unwrap();
        let zeta = TenantId::parse("zeta").unwrap();
        let q = fx.q();
        let backlog: Vec<NewEvent> = (0..1000)
            .map(|n| tenant_event(&format!("evt_backlog{n}"), &acme, &["sub_acme1"], fx.shards()))
            .collect();
        for chunk in backlog.chunks(250) {
            q.enqueue(chunk, WINDOW).await.unwrap();
        }
        let operators: Vec<NewEvent> = (0..5)
            .map(|n| event(&format!("evt_ops{n}"), &["crm"], fx.shards()))
            .collect();
        q.enqueue(&operators, WINDOW).await.unwrap();
        let theirs = tenant_event("evt_zeta", &zeta, &["sub_zeta1"], fx.shards());
        let id = theirs.deliveries[0].id.clone();
        q.enqueue(&[theirs], WINDOW).await.unwrap();

        let t = now_ms();
        let (first, mine) = turn(&*q, t, &id).await;
        let owned_by = |owner: Option<&TenantId>| first.iter().filter(|c| c.delivery.owner() == owner).count();
        assert!(
            mine.is_some(),
            "zeta's one delivery took its turn: {:?}",
            ids_of(&first)
        );
        let (of_acme, of_operator) = (owned_by(Some(&acme)), owned_by(None));
        assert!(
            of_acme >= 4 && of_operator >= 4,
            "acme and the operator took turns: {of_acme} and {of_operator} of 10"
        );

        // Retried: due again later, and its turn comes then.
        let mine = mine.unwrap();
        q.settle(&[Settlement::Retry {
            delivery: mine.delivery.clone(),
            lease: mine.lease,
            due: t + 1_000,
        }])
        .await
        .unwrap();
        assert!(turn(&*q, t + 500, &id).await.1.is_none(), "not before it is due");
        let mine = turn(&*q, t + 1_000, &id).await.1.expect("a retry takes its turn");

        // Parked, then unparked.
        q.settle(&[Settlement::Park {
            id: id.clone(),
            lease: mine.lease,
        }])
        .await
        .unwrap();
        assert!(
            turn(&*q, t + 1_000, &id).await.1.is_none(),
            "a parked delivery is not claimed"
        );
        let sub = SubscriptionName::parse("sub_zeta1").unwrap();
        assert_eq!(q.unpark(&sub, t + 1_000).await.unwrap(), 1);
        let mine = turn(&*q, t + 1_000, &id)
            .await
            .1
            .expect("an unparked delivery takes its turn");

        // Dead, then replayed.
        q.settle(&[Settlement::Dead {
            delivery: mine.delivery.clone(),
            lease: mine.lease,
        }])
        .await
        .unwrap();
        assert!(
            turn(&*q, t + 1_000, &id).await.1.is_none(),
            "a dead delivery is not claimed"
        );
        assert!(q.replay(&id, t + 1_000).await.unwrap());
        let mine = turn(&*q, t + 1_000, &id)
            .await
            .1
            .expect("a replayed delivery takes its turn");

        // Rescheduled, then across a restart.
        assert!(q.reschedule(&id, mine.lease, t + 2_000).await.unwrap());
        drop(q);
        fx.reopen().await;
        let q = fx.q();
        assert!(turn(&*q, t + 1_500, &id).await.1.is_none(), "not before its new time");
        let mine = turn(&*q, t + 2_000, &id)
            .await
            .1
            .expect("a rescheduled delivery takes its turn");
        q.settle(&[Settlement::Ack {
            id: id.clone(),
            lease: mine.lease,
        }])
        .await
        .unwrap();

        // Once every lease has run out, one claim takes all that is left,
        // each once: the turns starve nobody and lose nothing.
        let all = q.claim(t + 10 * LEASE_MS, LEASE, 2_000).await.unwrap().claims;
        let ids: HashSet<DeliveryId> = ids_of(&all).into_iter().collect();
        assert_eq!((all.len(), ids.len()), (1005, 1005));
        assert!(!ids.contains(&id), "acked is gone");
        assert!(q.claim(t + 10 * LEASE_MS, LEASE, 10).await.unwrap().claims.is_empty());
    }

    /// Claims smaller than the owners with something due still let them
    /// take turns: one owner just served waits behind the others, so a
    /// dispatcher claiming a few at a time (as it does when its slots are
    /// full) never starves the owner whose deliveries came last.
    pub async fn claims_of_one_alternate_between_owners(fx: &mut Fixture) {
        let acme = TenantId::parse("acme").unwrap();
        let zeta = TenantId::parse("zeta").unwrap();
        let q = fx.q();
        let backlog: Vec<NewEvent> = (0..20)
            .map(|n| tenant_event(&format!("evt_one{n}"), &acme, &["sub_acme1"], fx.shards()))
            .collect();
        q.enqueue(&backlog, WINDOW).await.unwrap();
        let theirs: Vec<NewEvent> = (0..3)
            .map(|n| tenant_event(&format!("evt_two{n}"), &zeta, &["sub_zeta1"], fx.shards()))
            .collect();
        q.enqueue(&theirs, WINDOW).await.unwrap();
        let t = now_ms();
        let mut owners = Vec::new();
        for i in 0..8 {
            let claims = q.claim(t + i, LEASE, 1).await.unwrap().claims;
            assert_eq!(claims.len(), 1);
            owners.push(claims[0].delivery.owner().unwrap().as_str().to_owned());
        }
        assert_eq!(owners, ["acme", "zeta", "acme", "zeta", "acme", "zeta", "acme", "acme"]);
    }

    pub async fn claims_respect_max_and_due_order_across_shards(fx: &mut Fixture) {
        let q = fx.q();
        let ids: Vec<String> = (0..6).map(|n| format!("evt_order_{n}")).collect();
        let deliveries = enqueue_singles(&*q, &ids, fx.shards()).await;
        let shards: HashSet<u16> = deliveries.iter().map(|d| d.id.shard()).collect();
        assert!(
            shards.len() >= 3,
            "the test needs deliveries in several shards: {shards:?}"
        );

        let t = now_ms();
        let claimed = q.claim(t, LEASE, 100).await.unwrap();
        assert_eq!(claimed.claims.len(), 6);
        // Give each a due time, in an order unrelated to shards and ids.
        let base = t + 10_000;
        let rank = [3, 0, 5, 1, 4, 2];
        let mut by_rank: Vec<Option<DeliveryId>> = vec![None; 6];
        let settlements: Vec<Settlement> = claimed
            .claims
            .iter()
            .zip(rank)
            .map(|(c, k)| {
                by_rank[k] = Some(c.delivery.id.clone());
                Settlement::Retry {
                    delivery: c.delivery.clone(),
                    lease: c.lease,
                    due: base + 100 * k as Millis,
                }
            })
            .collect();
        q.settle(&settlements).await.unwrap();
        let by_rank: Vec<DeliveryId> = by_rank.into_iter().map(Option::unwrap).collect();

        // Only what is due, oldest first.
        let first = q.claim(base + 250, LEASE, 10).await.unwrap();
        assert_eq!(ids_of(&first.claims), by_rank[..3].to_vec());
        // At most `max`, still oldest first.
        let second = q.claim(base + 10_000, LEASE, 2).await.unwrap();
        assert_eq!(ids_of(&second.claims), by_rank[3..5].to_vec());
        let third = q.claim(base + 10_000, LEASE, 10).await.unwrap();
        assert_eq!(ids_of(&third.claims), by_rank[5..].to_vec());
        assert!(q.claim(base + 10_000, LEASE, 10).await.unwrap().claims.is_empty());
    }

    pub async fn claims_are_invisible_until_the_lease_ends(fx: &mut Fixture) {
        let q = fx.q();
        let d = enqueue_singles(&*q, &["evt_lease".into()], fx.shards()).await.remove(0);
        let t = now_ms();
        let first = q.claim(t, LEASE, 10).await.unwrap();
        assert_eq!(ids_of(&first.claims), vec![d.id.clone()]);
        assert_eq!(first.claims[0].lease, Lease(t + LEASE_MS));

        // The worker "crashes": nobody settles.
        assert!(q.claim(t + LEASE_MS - 1, LEASE, 10).await.unwrap().claims.is_empty());
        let again = q.claim(t + LEASE_MS, LEASE, 10).await.unwrap();
        assert_eq!(ids_of(&again.claims), vec![d.id.clone()]);
        assert_eq!(again.claims[0].lease, Lease(t + 2 * LEASE_MS));
        assert_eq!(again.claims[0].delivery, d);
    }

    pub async fn stale_leases_settle_nothing(fx: &mut Fixture) {
        let q = fx.q();
        let d = enqueue_singles(&*q, &["evt_fence".into()], fx.shards()).await.remove(0);
        let t = now_ms();
        let stale = q.claim(t, Duration::from_secs(1), 1).await.unwrap().claims.remove(0);
        assert!(q.claim(t + 500, LEASE, 1).await.unwrap().claims.is_empty());
        let fresh = q.claim(t + 1_000, LEASE, 1).await.unwrap().claims.remove(0);
        assert_ne!(stale.lease, fresh.lease);

        let mut altered = d.clone();
        altered.attempts = 9;
        altered.last_error = Some("from a worker whose lease ran out".into());
        q.settle(&[
            Settlement::Ack {
                id: d.id.clone(),
                lease: stale.lease,
            },
            Settlement::Retry {
                delivery: altered.clone(),
                lease: stale.lease,
                due: t,
            },
            Settlement::Defer {
                id: d.id.clone(),
                lease: stale.lease,
                due: t,
            },
            Settlement::Dead {
                delivery: altered,
                lease: stale.lease,
            },
        ])
        .await
        .unwrap();
        let (stored, standing) = q.get(&d.id).await.unwrap().expect("still queued");
        assert_eq!(stored, d, "stale settlements must not alter the record");
        assert_eq!(standing, Standing::Pending { due: fresh.lease.0 });
        assert!(q.dead(10).await.unwrap().is_empty());

        q.settle(&[Settlement::Ack {
            id: d.id.clone(),
            lease: fresh.lease,
        }])
        .await
        .unwrap();
        assert_eq!(q.get(&d.id).await.unwrap(), None);
    }

    pub async fn ack_removes(fx: &mut Fixture) {
        let q = fx.q();
        let ds = enqueue_singles(&*q, &["evt_ack_1".into(), "evt_ack_2".into()], fx.shards()).await;
        let claimed = q.claim(now_ms(), LEASE, 10).await.unwrap();
        let acks: Vec<Settlement> = claimed
            .claims
            .iter()
            .map(|c| Settlement::Ack {
                id: c.delivery.id.clone(),
                lease: c.lease,
            })
            .collect();
        q.settle(&acks).await.unwrap();
        for d in &ds {
            assert_eq!(q.get(&d.id).await.unwrap(), None);
        }
        assert_eq!(q.depth(now_ms() + 10 * LEASE_MS).await.unwrap(), Depth::default());
        let after = q.claim(now_ms() + 10 * LEASE_MS, LEASE, 10).await.unwrap();
        assert!(after.claims.is_empty());
        assert_eq!(after.next_due, None);
    }

    pub async fn retry_stores_the_record_and_falls_due_later(fx: &mut Fixture) {
        let q = fx.q();
        let d = enqueue_singles(&*q, &["evt_retry".into()], fx.shards()).await.remove(0);
        let t = now_ms();
        let claim = q.claim(t, LEASE, 1).await.unwrap().claims.remove(0);
        let mut failed = claim.delivery.clone();
        failed.attempts = 1;
        failed.last_error = Some("status 500".into());
        q.settle(&[Settlement::Retry {
            delivery: failed.clone(),
            lease: claim.lease,
            due: t + 5_000,
        }])
        .await
        .unwrap();

        assert_eq!(
            q.get(&d.id).await.unwrap(),
            Some((failed.clone(), Standing::Pending { due: t + 5_000 }))
        );
        let early = q.claim(t + 4_999, LEASE, 1).await.unwrap();
        assert!(early.claims.is_empty());
        assert_eq!(early.next_due, Some(t + 5_000));
        let due = q.claim(t + 5_000, LEASE, 1).await.unwrap();
        assert_eq!(due.claims.len(), 1);
        assert_eq!(due.claims[0].delivery, failed);
    }

    pub async fn defer_keeps_the_record(fx: &mut Fixture) {
        let q = fx.q();
        let d = enqueue_singles(&*q, &["evt_defer".into()], fx.shards()).await.remove(0);
        let t = now_ms();
        let claim = q.claim(t, LEASE, 1).await.unwrap().claims.remove(0);
        q.settle(&[Settlement::Defer {
            id: d.id.clone(),
            lease: claim.lease,
            due: t + 2_000,
        }])
        .await
        .unwrap();
        assert_eq!(
            q.get(&d.id).await.unwrap(),
            Some((d.clone(), Standing::Pending { due: t + 2_000 }))
        );
        assert!(q.claim(t + 1_999, LEASE, 1).await.unwrap().claims.is_empty());
        assert_eq!(q.claim(t + 2_000, LEASE, 1).await.unwrap().claims[0].delivery, d);
    }

    pub async fn dead_deliveries_are_listed_and_replayable(fx: &mut Fixture) {
        let q = fx.q();
        let ds = enqueue_singles(&*q, &["evt_dead_1".into(), "evt_dead_2".into()], fx.shards()).await;
        let claimed = q.claim(now_ms(), LEASE, 10).await.unwrap();
        let mut dead = Vec::new();
        for d in &ds {
            let claim = claimed.claims.iter().find(|c| c.delivery.id == d.id).expect("claimed");
            let mut failed = d.clone();
            failed.attempts = 6;
            failed.last_error = Some("status 503".into());
            let before = now_ms();
            q.settle(&[Settlement::Dead {
                delivery: failed.clone(),
                lease: claim.lease,
            }])
            .await
            .unwrap();
            let (stored, standing) = q.get(&d.id).await.unwrap().expect("kept");
            assert_eq!(stored, failed);
            assert!(
                matches!(standing, Standing::Dead { since } if since >= before),
                "{standing:?}"
            );
            dead.push(failed);
            // Distinct times of death, so "most recent first" is defined.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(q.dead(10).await.unwrap(), vec![dead[1].clone(), dead[0].clone()]);
        assert_eq!(q.dead(1).await.unwrap(), vec![dead[1].clone()]);
        assert!(q
            .claim(now_ms() + 100 * LEASE_MS, LEASE, 10)
            .await
            .unwrap()
            .claims
            .is_empty());
        assert_eq!(
            q.depth(now_ms()).await.unwrap(),
            Depth {
                due: 0,
                scheduled: 0,
                dead: 2,
                parked: 0
            }
        );

        let t = now_ms();
        assert!(q.replay(&ds[0].id, t).await.unwrap());
        assert!(!q.replay(&ds[0].id, t).await.unwrap(), "no longer dead");
        assert!(!q.replay(&DeliveryId::new(0), t).await.unwrap(), "unknown");
        let (stored, standing) = q.get(&ds[0].id).await.unwrap().expect("queued again");
        assert_eq!(standing, Standing::Pending { due: t });
        assert_eq!(stored.attempts, 0);
        assert_eq!(stored.last_error, None);
        assert_eq!(stored.body, ds[0].body);
        assert_eq!(q.dead(10).await.unwrap(), vec![dead[1].clone()]);
        let back = q.claim(t, LEASE, 10).await.unwrap();
        assert_eq!(ids_of(&back.claims), vec![ds[0].id.clone()]);
        assert_eq!(back.claims[0].delivery.attempts, 0);
    }

    pub async fn dead_walk_visits_each_once_in_death_order(fx: &mut Fixture) {
        let q = fx.q();
        let ids: Vec<String> = (0..30).map(|n| format!("evt_walk_{n}")).collect();
        let ds = enqueue_singles(&*q, &ids, fx.shards()).await;
        let claims = q.claim(now_ms(), LEASE, 100).await.unwrap().claims;
        assert_eq!(claims.len(), 30);
        // Three settle batches: deliveries of one batch die in the same
        // millisecond, so ties are broken by id.
        for chunk in claims.chunks(10) {
            let dead: Vec<Settlement> = chunk
                .iter()
                .map(|c| Settlement::Dead {
                    delivery: c.delivery.clone(),
                    lease: c.lease,
                })
                .collect();
            q.settle(&dead).await.unwrap();
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        let walk = |q: Arc<dyn Queue>| async move {
            let mut seen: Vec<(Millis, DeliveryId)> = Vec::new();
            loop {
                let after = seen.last().map(|(at, id)| (*at, id.clone()));
                let page = q.dead_after(after.as_ref().map(|(at, id)| (*at, id)), 7).await.unwrap();
                if page.is_empty() {
                    return seen;
                }
                assert!(page.len() <= 7);
                seen.extend(page.into_iter().map(|(at, d)| (at, d.id)));
            }
        };
        let first = walk(q.clone()).await;
        let mut sorted = first.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(first, sorted, "in (death time, id) order, each once");
        let mut visited: Vec<DeliveryId> = first.iter().map(|(_, id)| id.clone()).collect();
        visited.sort();
        let mut expected: Vec<DeliveryId> = ds.iter().map(|d| d.id.clone()).collect();
        expected.sort();
        assert_eq!(visited, expected);
        assert!(q.dead_after(None, 0).await.unwrap().is_empty());

        // One replayed and dead again moves behind every other.
        let again = &first[4].1;
        let t = now_ms();
        assert!(q.replay(again, t).await.unwrap());
        let claim = q.claim(t, LEASE, 10).await.unwrap().claims.pop().expect("replayed");
        q.settle(&[Settlement::Dead {
            delivery: claim.delivery.clone(),
            lease: claim.lease,
        }])
        .await
        .unwrap();
        let second = walk(q.clone()).await;
        assert_eq!(second.len(), 30);
        assert_eq!(&second.last().unwrap().1, again);
        assert!(second.last().unwrap().0 >= first.last().unwrap().0);
    }

    pub async fn rate_limit_buckets_grant_the_burst_then_the_rate(fx: &mut Fixture) {
        let s = fx.s();
        let crm = SubscriptionName::parse("crm").unwrap();
        let billing = SubscriptionName::parse("billing").unwrap();
        let limit = RateLimit {
            per_second: 5.0,
            burst: Some(2),
        };
        let t = now_ms();
        let first = s.take_tokens(&crm, &limit, 12, t).await.unwrap();
        assert_eq!(first.granted, 2, "the burst");
        assert_eq!(first.next_at, Some(t + 200));
        let early = s.take_tokens(&crm, &limit, 1, t + 100).await.unwrap();
        assert_eq!((early.granted, early.next_at), (0, Some(t + 200)));
        let due = s.take_tokens(&crm, &limit, 3, t + 200).await.unwrap();
        assert_eq!((due.granted, due.next_at), (1, Some(t + 400)));
        // Each subscription has its own bucket.
        let other = s.take_tokens(&billing, &limit, 2, t + 200).await.unwrap();
        assert_eq!((other.granted, other.next_at), (2, None));
        // After a quiet spell the burst is back, never more.
        let later = s.take_tokens(&crm, &limit, 5, t + 60_000).await.unwrap();
        assert_eq!((later.granted, later.next_at), (2, Some(t + 60_200)));
    }

    pub async fn reschedule_needs_the_current_due(fx: &mut Fixture) {
        let q = fx.q();
        let ds = enqueue_singles(&*q, &["evt_resched".into()], fx.shards()).await;
        let t = now_ms();
        let claim = q.claim(t, LEASE, 1).await.unwrap().claims.pop().expect("claimed");
        // In flight: its due time is the lease's end, not a retry's.
        let later = t + 5 * LEASE_MS;
        assert!(!q.reschedule(&ds[0].id, Lease(later), t).await.unwrap());
        let mut failed = claim.delivery.clone();
        failed.attempts = 1;
        q.settle(&[Settlement::Retry {
            delivery: failed.clone(),
            lease: claim.lease,
            due: later,
        }])
        .await
        .unwrap();
        assert!(
            !q.reschedule(&ds[0].id, Lease(later - 1), t).await.unwrap(),
            "wrong due"
        );
        assert!(
            !q.reschedule(&DeliveryId::new(0), Lease(later), t).await.unwrap(),
            "unknown"
        );
        assert!(q.reschedule(&ds[0].id, Lease(later), t).await.unwrap());
        assert!(
            !q.reschedule(&ds[0].id, Lease(later), t).await.unwrap(),
            "moved already"
        );
        let (stored, standing) = q.get(&ds[0].id).await.unwrap().expect("queued");
        assert_eq!(standing, Standing::Pending { due: t });
        assert_eq!(stored, failed, "record untouched");
        let again = q.claim(t, LEASE, 1).await.unwrap().claims;
        assert_eq!(ids_of(&again), vec![ds[0].id.clone()]);
    }

    pub async fn depth_counts_due_scheduled_and_dead(fx: &mut Fixture) {
        let q = fx.q();
        let ids: Vec<String> = (0..4).map(|n| format!("evt_depth_{n}")).collect();
        let ds = enqueue_singles(&*q, &ids, fx.shards()).await;
        let t = now_ms();
        assert_eq!(
            q.depth(t).await.unwrap(),
            Depth {
                due: 4,
                scheduled: 0,
                dead: 0,
                parked: 0
            }
        );
        let claimed = q.claim(t, LEASE, 10).await.unwrap();
        let lease_of = |id: &DeliveryId| {
            claimed
                .claims
                .iter()
                .find(|c| &c.delivery.id == id)
                .expect("claimed")
                .lease
        };
        q.settle(&[
            Settlement::Retry {
                delivery: ds[0].clone(),
                lease: lease_of(&ds[0].id),
                due: t + 5_000,
            },
            Settlement::Defer {
                id: ds[1].id.clone(),
                lease: lease_of(&ds[1].id),
                due: t,
            },
            Settlement::Dead {
                delivery: ds[2].clone(),
                lease: lease_of(&ds[2].id),
            },
        ])
        .await
        .unwrap();
        // ds[3] is still leased: scheduled until its lease ends.
        assert_eq!(
            q.depth(t).await.unwrap(),
            Depth {
                due: 1,
                scheduled: 2,
                dead: 1,
                parked: 0
            }
        );
        assert_eq!(
            q.depth(t + LEASE_MS).await.unwrap(),
            Depth {
                due: 3,
                scheduled: 0,
                dead: 1,
                parked: 0
            }
        );
    }

    pub async fn next_due_is_reported_when_nothing_is_due(fx: &mut Fixture) {
        let q = fx.q();
        let empty = q.claim(now_ms(), LEASE, 10).await.unwrap();
        assert!(empty.claims.is_empty());
        assert_eq!(empty.next_due, None);

        enqueue_singles(&*q, &["evt_next".into()], fx.shards()).await;
        let t = now_ms();
        let claimed = q.claim(t, LEASE, 10).await.unwrap();
        assert_eq!(claimed.claims.len(), 1);
        assert_eq!(claimed.next_due, None, "only reported when nothing was claimed");
        let idle = q.claim(t + 1, LEASE, 10).await.unwrap();
        assert!(idle.claims.is_empty());
        assert_eq!(idle.next_due, Some(t + LEASE_MS), "the lease's end");
    }

    pub async fn concurrent_claimers_never_share_a_delivery(fx: &mut Fixture) {
        let q = fx.q();
        let ids: Vec<String> = (0..2_000).map(|n| format!("evt_many_{n}")).collect();
        let mut all = HashSet::new();
        for chunk in ids.chunks(250) {
            all.extend(enqueue_singles(&*q, chunk, fx.shards()).await.into_iter().map(|d| d.id));
        }
        let workers: Vec<_> = (0..8)
            .map(|_| {
                let q = q.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    loop {
                        let claimed = q.claim(now_ms(), LEASE, 37).await.expect("claim");
                        if claimed.claims.is_empty() {
                            return got;
                        }
                        let acks: Vec<Settlement> = claimed
                            .claims
                            .iter()
                            .map(|c| Settlement::Ack {
                                id: c.delivery.id.clone(),
                                lease: c.lease,
                            })
                            .collect();
                        got.extend(ids_of(&claimed.claims));
                        q.settle(&acks).await.expect("settle");
                    }
                })
            })
            .collect();
        let mut seen = HashSet::new();
        for worker in workers {
            for id in worker.await.expect("worker") {
                assert!(seen.insert(id.clone()), "{id} was handed out twice");
            }
        }
        assert_eq!(seen, all, "together the workers received every delivery");
        assert_eq!(q.depth(now_ms() + 10 * LEASE_MS).await.unwrap(), Depth::default());
    }

    pub async fn data_survives_a_restart(fx: &mut Fixture) {
        let q = fx.q();
        let ids: Vec<String> = (0..3).map(|n| format!("evt_durable_{n}")).collect();
        let ds = enqueue_singles(&*q, &ids, fx.shards()).await;
        let t = now_ms();
        let claimed = q.claim(t, LEASE, 10).await.unwrap();
        let lease_of = |id: &DeliveryId| {
            claimed
                .claims
                .iter()
                .find(|c| &c.delivery.id == id)
                .expect("claimed")
                .lease
        };
        let mut retried = ds[0].clone();
        retried.attempts = 1;
        q.settle(&[
            Settlement::Retry {
                delivery: retried.clone(),
                lease: lease_of(&ds[0].id),
                due: t + 5_000,
            },
            Settlement::Dead {
                delivery: ds[1].clone(),
                lease: lease_of(&ds[1].id),
            },
        ])
        .await
        .unwrap();
        let before = q.depth(t).await.unwrap();
        drop(q);

        fx.reopen().await;
        let q = fx.q();
        assert_eq!(
            q.get(&ds[0].id).await.unwrap(),
            Some((retried, Standing::Pending { due: t + 5_000 }))
        );
        assert!(matches!(
            q.get(&ds[1].id).await.unwrap(),
            Some((_, Standing::Dead { .. }))
        ));
        assert_eq!(
            q.get(&ds[2].id).await.unwrap(),
            Some((ds[2].clone(), Standing::Pending { due: t + LEASE_MS }))
        );
        assert_eq!(q.depth(t).await.unwrap(), before);
        let again = event(&ids[0], &["crm"], fx.shards());
        assert_eq!(q.enqueue(&[again], WINDOW).await.unwrap(), vec![Enqueued::Duplicate]);
    }

    pub async fn misplaced_deliveries_are_refused(fx: &mut Fixture) {
        let q = fx.q();
        let mut e = event("evt_misplaced", &["crm"], fx.shards());
        let wrong = (e.deliveries[0].id.shard() + 1) % fx.shards();
        e.deliveries[0].id = DeliveryId::new(wrong);
        let err = q.enqueue(&[e], WINDOW).await.unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err}");
        assert!(err.to_string().contains("shard_of"), "{err}");
        assert_eq!(q.depth(now_ms()).await.unwrap(), Depth::default());
    }
    /// Claims everything due at `now`, in batches, in claim order.
    async fn claim_all(q: &dyn Queue, now: Millis) -> Vec<Claim> {
        let mut all = Vec::new();
        loop {
            let claimed = q.claim(now, LEASE, 1000).await.expect("claim");
            if claimed.claims.is_empty() {
                return all;
            }
            all.extend(claimed.claims);
        }
    }

    /// Parks every claim.
    async fn park(q: &dyn Queue, claims: &[Claim]) {
        let parks: Vec<Settlement> = claims
            .iter()
            .map(|c| Settlement::Park {
                id: c.delivery.id.clone(),
                lease: c.lease,
            })
            .collect();
        q.settle(&parks).await.expect("park");
    }

    /// Acks every claim.
    async fn ack(q: &dyn Queue, claims: &[Claim]) {
        let acks: Vec<Settlement> = claims
            .iter()
            .map(|c| Settlement::Ack {
                id: c.delivery.id.clone(),
                lease: c.lease,
            })
            .collect();
        q.settle(&acks).await.expect("ack");
    }

    fn sub(name: &str) -> SubscriptionName {
        SubscriptionName::parse(name).expect("valid name")
    }

    pub async fn parking_needs_the_current_lease(fx: &mut Fixture) {
        let q = fx.q();
        let d = enqueue_singles(&*q, &["evt_park".into()], fx.shards()).await.remove(0);
        let t = now_ms();
        let stale = q.claim(t, Duration::from_secs(1), 1).await.unwrap().claims.remove(0);
        let fresh = q.claim(t + 1_000, LEASE, 1).await.unwrap().claims.remove(0);
        q.settle(&[Settlement::Park {
            id: d.id.clone(),
            lease: stale.lease,
        }])
        .await
        .unwrap();
        assert_eq!(
            q.get(&d.id).await.unwrap(),
            Some((d.clone(), Standing::Pending { due: fresh.lease.0 })),
            "a stale lease parks nothing"
        );
        assert_eq!(q.depth(t).await.unwrap().parked, 0);

        let before = now_ms();
        park(&*q, std::slice::from_ref(&fresh)).await;
        let (stored, standing) = q.get(&d.id).await.unwrap().expect("kept while parked");
        assert_eq!(stored, d, "the record is kept as it was");
        assert!(
            matches!(standing, Standing::Parked { since } if since >= before),
            "{standing:?}"
        );
        assert_eq!(
            q.depth(t + 100 * LEASE_MS).await.unwrap(),
            Depth {
                due: 0,
                scheduled: 0,
                dead: 0,
                parked: 1
            }
        );

        // Parked, it has no lease: nothing settles it any more.
        let mut altered = d.clone();
        altered.attempts = 7;
        q.settle(&[
            Settlement::Ack {
                id: d.id.clone(),
                lease: fresh.lease,
            },
            Settlement::Retry {
                delivery: altered.clone(),
                lease: fresh.lease,
                due: t,
            },
            Settlement::Defer {
                id: d.id.clone(),
                lease: fresh.lease,
                due: t,
            },
            Settlement::Dead {
                delivery: altered,
                lease: fresh.lease,
            },
            Settlement::Park {
                id: d.id.clone(),
                lease: fresh.lease,
            },
        ])
        .await
        .unwrap();
        assert_eq!(q.get(&d.id).await.unwrap().map(|(d, _)| d), Some(d.clone()));
        assert!(matches!(
            q.get(&d.id).await.unwrap(),
            Some((_, Standing::Parked { .. }))
        ));

        // Never claimed, not dead, not replayable.
        let idle = q.claim(t + 100 * LEASE_MS, LEASE, 10).await.unwrap();
        assert!(idle.claims.is_empty());
        assert_eq!(idle.next_due, None, "parked deliveries are not waiting to fall due");
        assert!(q.dead(10).await.unwrap().is_empty());
        assert!(!q.replay(&d.id, t).await.unwrap(), "parked is not dead");
        assert_eq!(
            q.unpark(&sub("billing"), now_ms()).await.unwrap(),
            0,
            "another subscription's"
        );

        assert_eq!(q.unpark(&d.subscription, now_ms()).await.unwrap(), 1);
        assert_eq!(q.unpark(&d.subscription, now_ms()).await.unwrap(), 0, "nothing left");
        let back = q.claim(now_ms(), LEASE, 10).await.unwrap();
        assert_eq!(ids_of(&back.claims), vec![d.id.clone()]);
        assert_eq!(back.claims[0].delivery, d);
    }

    pub async fn unparked_deliveries_come_back_in_created_order(fx: &mut Fixture) {
        let q = fx.q();
        let base = now_ms() - 1_000_000;
        // 100 events, alternately for `alpha` and `beta`, created 1 ms apart.
        let events: Vec<NewEvent> = (0..100)
            .map(|n| {
                let to = if n % 2 == 0 { "alpha" } else { "beta" };
                let mut e = event(&format!("evt_order_park_{n}"), &[to], fx.shards());
                e.deliveries[0].created_at = base + n;
                e
            })
            .collect();
        let results = q.enqueue(&events, WINDOW).await.unwrap();
        assert!(results.iter().all(|r| *r == Enqueued::Accepted));
        let alpha: Vec<DeliveryId> = events
            .iter()
            .flat_map(|e| &e.deliveries)
            .filter(|d| d.subscription.as_str() == "alpha")
            .map(|d| d.id.clone())
            .collect();
        let shards: HashSet<u16> = alpha.iter().map(DeliveryId::shard).collect();
        assert!(shards.len() >= 3, "the test needs several shards: {shards:?}");

        let t = now_ms();
        let claimed = claim_all(&*q, t).await;
        assert_eq!(claimed.len(), 100);
        let (to_alpha, to_beta): (Vec<Claim>, Vec<Claim>) = claimed
            .into_iter()
            .partition(|c| c.delivery.subscription.as_str() == "alpha");
        park(&*q, &to_alpha).await;
        // beta's run out of lease and are claimed again; alpha's never are.
        let again = claim_all(&*q, t + LEASE_MS).await;
        assert_eq!(again.len(), 50);
        assert!(again.iter().all(|c| c.delivery.subscription.as_str() == "beta"));
        ack(&*q, &again).await;
        drop(to_beta);
        assert_eq!(q.depth(t + 2 * LEASE_MS).await.unwrap().parked, 50);
        for id in &alpha {
            assert!(matches!(q.get(id).await.unwrap(), Some((_, Standing::Parked { .. }))));
        }

        // A newer alpha delivery, enqueued while the others are parked.
        let newer = event("evt_order_park_newer", &["alpha"], fx.shards());
        assert_eq!(
            q.enqueue(std::slice::from_ref(&newer), WINDOW).await.unwrap(),
            vec![Enqueued::Accepted]
        );
        let newer = newer.deliveries[0].clone();

        let now = now_ms();
        assert_eq!(q.unpark(&sub("alpha"), now).await.unwrap(), 50);
        let depth = q.depth(now).await.unwrap();
        assert_eq!((depth.parked, depth.due), (0, 51), "{depth:?}");
        let (_, standing) = q.get(&alpha[0]).await.unwrap().expect("queued");
        assert_eq!(standing, Standing::Pending { due: base }, "due at its created_at");
        let back = q.claim(now, LEASE, 100).await.unwrap();
        let mut want = alpha.clone();
        want.push(newer.id.clone());
        assert_eq!(ids_of(&back.claims), want, "oldest first, before anything newer");
    }

    pub async fn unparking_thousands_loses_nothing(fx: &mut Fixture) {
        let q = fx.q();
        let ids: Vec<String> = (0..5_000).map(|n| format!("evt_bulk_{n}")).collect();
        let mut all = Vec::new();
        for chunk in ids.chunks(500) {
            all.extend(enqueue_singles(&*q, chunk, fx.shards()).await);
        }
        let t = now_ms();
        let claimed = claim_all(&*q, t).await;
        assert_eq!(claimed.len(), 5_000);
        for chunk in claimed.chunks(1_000) {
            park(&*q, chunk).await;
        }
        assert_eq!(q.depth(t).await.unwrap().parked, 5_000);

        let now = now_ms();
        assert_eq!(q.unpark(&sub("crm"), now).await.unwrap(), 5_000);
        let depth = q.depth(now).await.unwrap();
        assert_eq!((depth.due, depth.scheduled, depth.parked), (5_000, 0, 0), "{depth:?}");
        let back = claim_all(&*q, now).await;
        let mut want: Vec<(Millis, DeliveryId)> = all.iter().map(|d| (d.created_at, d.id.clone())).collect();
        want.sort();
        let got: Vec<(Millis, DeliveryId)> = back
            .iter()
            .map(|c| (c.delivery.created_at, c.delivery.id.clone()))
            .collect();
        assert_eq!(got.len(), 5_000);
        assert!(got == want, "claimed in (created_at, id) order, each once");
    }

    pub async fn unpark_races_claimers_without_loss_or_duplicates(fx: &mut Fixture) {
        let q = fx.q();
        let ids: Vec<String> = (0..2_500).map(|n| format!("evt_race_{n}")).collect();
        let mut all = HashSet::new();
        for chunk in ids.chunks(500) {
            all.extend(enqueue_singles(&*q, chunk, fx.shards()).await.into_iter().map(|d| d.id));
        }
        let claimed = claim_all(&*q, now_ms()).await;
        for chunk in claimed.chunks(1_000) {
            park(&*q, chunk).await;
        }
        let unparked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let workers: Vec<_> = (0..6)
            .map(|_| {
                let q = q.clone();
                let unparked = unparked.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    loop {
                        // Read the flag first: if it was set, an empty claim
                        // after it means everything was handed out.
                        let done = unparked.load(std::sync::atomic::Ordering::SeqCst);
                        let claimed = q.claim(now_ms(), LEASE, 41).await.expect("claim");
                        if claimed.claims.is_empty() {
                            if done {
                                return got;
                            }
                            tokio::task::yield_now().await;
                            continue;
                        }
                        got.extend(ids_of(&claimed.claims));
                        ack(&*q, &claimed.claims).await;
                    }
                })
            })
            .collect();
        let unparks: Vec<_> = (0..3)
            .map(|_| {
                let q = q.clone();
                tokio::spawn(async move { q.unpark(&sub("crm"), now_ms()).await.expect("unpark") })
            })
            .collect();
        let mut moved = 0;
        for u in unparks {
            moved += u.await.expect("unpark task");
        }
        unparked.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(moved, 2_500, "each parked delivery moved exactly once");
        let mut seen = HashSet::new();
        for worker in workers {
            for id in worker.await.expect("worker") {
                assert!(seen.insert(id.clone()), "{id} was handed out twice");
            }
        }
        assert_eq!(seen, all, "every delivery came back");
        assert_eq!(q.depth(now_ms() + 10 * LEASE_MS).await.unwrap(), Depth::default());
    }

    pub async fn subscription_state_defaults_and_toggles(fx: &mut Fixture) {
        let s = fx.s();
        let crm = sub("crm");
        assert_eq!(s.subscription_state(&crm).await.unwrap(), SubscriptionState::default());
        assert!(SubscriptionState::default().enabled);
        assert!(s.subscription_states().await.unwrap().is_empty());
        assert!(!s.set_enabled(&crm, true, None, 5).await.unwrap(), "already enabled");

        let failing = HealthUpdate {
            subscription: crm.clone(),
            successes: 0,
            failures: 4,
            last_outcome_success: false,
            last_success_at: None,
            last_failure_at: Some(90),
        };
        s.record_health(&[failing]).await.unwrap();
        assert!(s.set_enabled(&crm, false, Some("410 Gone".into()), 100).await.unwrap());
        assert!(
            !s.set_enabled(&crm, false, Some("again".into()), 200).await.unwrap(),
            "idempotent"
        );
        let disabled = s.subscription_state(&crm).await.unwrap();
        assert_eq!(
            disabled,
            SubscriptionState {
                enabled: false,
                reason: Some("410 Gone".into()),
                since: 100,
                consecutive_failures: 4,
                failing_since: Some(90),
                last_success_at: None,
                last_failure_at: Some(90),
            }
        );
        assert!(s.set_enabled(&crm, true, Some("operator".into()), 300).await.unwrap());
        assert!(!s.set_enabled(&crm, true, None, 400).await.unwrap());
        assert_eq!(
            s.subscription_state(&crm).await.unwrap(),
            SubscriptionState {
                enabled: true,
                reason: Some("operator".into()),
                since: 300,
                consecutive_failures: 0,
                failing_since: None,
                last_success_at: None,
                last_failure_at: Some(90),
            },
            "enabling resets the counters, keeps the history"
        );
        assert!(s.set_enabled(&sub("billing"), false, None, 500).await.unwrap());
        let all = s.subscription_states().await.unwrap();
        let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["billing", "crm"]);
        assert_eq!(all[0].1.reason, None);
        assert!(!all[0].1.enabled);
        assert_eq!(all[0].1.since, 500);
    }

    pub async fn health_is_counted_by_the_rules(fx: &mut Fixture) {
        let s = fx.s();
        // (batches in turn as (successes, failures, last was a success),
        //  then consecutive_failures and failing_since after the last)
        type Batch = (u32, u32, bool);
        let cases: &[(&str, &[Batch], u64, Option<Millis>)] = &[
            ("fail_once", &[(0, 3, false)], 3, Some(1_000)),
            ("fail_twice", &[(0, 3, false), (0, 2, false)], 5, Some(1_000)),
            ("recover", &[(0, 3, false), (1, 2, true)], 0, None),
            ("success_mid_batch", &[(0, 3, false), (1, 2, false)], 2, Some(2_000)),
            ("fail_after_ok", &[(2, 0, true), (0, 1, false)], 1, Some(2_000)),
            ("only_ok", &[(5, 0, true), (1, 0, true)], 0, None),
        ];
        for &(name, batches, failures, since) in cases {
            let mut model = SubscriptionState::default();
            for (n, &(ok, failed, last_ok)) in batches.iter().enumerate() {
                let at = 1_000 * (n as Millis + 1);
                let update = HealthUpdate {
                    subscription: sub(name),
                    successes: ok,
                    failures: failed,
                    last_outcome_success: last_ok,
                    last_success_at: (ok > 0).then_some(at - 10),
                    last_failure_at: (failed > 0).then_some(at),
                };
                model.apply(&update);
                let states = s.record_health(std::slice::from_ref(&update)).await.unwrap();
                assert_eq!(states, vec![(sub(name), model.clone())], "{name}, batch {n}");
            }
            let state = s.subscription_state(&sub(name)).await.unwrap();
            assert_eq!(state, model, "{name}");
            assert_eq!(
                (state.consecutive_failures, state.failing_since),
                (failures, since),
                "{name}"
            );
            assert!(state.enabled);
        }

        // Several subscriptions (one twice) in one call, applied in order.
        let update = |name: &str, failures: u32, at: Millis| HealthUpdate {
            subscription: sub(name),
            successes: 0,
            failures,
            last_outcome_success: false,
            last_success_at: None,
            last_failure_at: Some(at),
        };
        let states = s
            .record_health(&[
                update("multi_a", 1, 10),
                update("multi_b", 2, 20),
                update("multi_a", 3, 5),
            ])
            .await
            .unwrap();
        let counts: Vec<(&str, u64, Option<Millis>)> = states
            .iter()
            .map(|(n, s)| (n.as_str(), s.consecutive_failures, s.last_failure_at))
            .collect();
        assert_eq!(
            counts,
            vec![
                ("multi_a", 1, Some(10)),
                ("multi_b", 2, Some(20)),
                ("multi_a", 4, Some(10))
            ],
            "last_failure_at never moves back"
        );

        // An inconsistent update refuses the whole call.
        let mut bad = update("multi_b", 1, 30);
        bad.last_failure_at = None;
        let err = s.record_health(&[update("multi_b", 1, 30), bad]).await.unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err}");
        assert_eq!(
            s.subscription_state(&sub("multi_b"))
                .await
                .unwrap()
                .consecutive_failures,
            2
        );
        assert_eq!(s.subscription_states().await.unwrap().len(), cases.len() + 2);
    }

    pub async fn parking_and_state_survive_a_restart(fx: &mut Fixture) {
        let q = fx.q();
        let s = fx.s();
        let ids: Vec<String> = (0..20).map(|n| format!("evt_park_durable_{n}")).collect();
        let ds = enqueue_singles(&*q, &ids, fx.shards()).await;
        let claimed = claim_all(&*q, now_ms()).await;
        park(&*q, &claimed).await;
        let crm = sub("crm");
        s.record_health(&[HealthUpdate {
            subscription: crm.clone(),
            successes: 1,
            failures: 6,
            last_outcome_success: false,
            last_success_at: Some(40),
            last_failure_at: Some(50),
        }])
        .await
        .unwrap();
        assert!(s
            .set_enabled(&crm, false, Some("failing for 1h".into()), 60)
            .await
            .unwrap());
        let state = s.subscription_state(&crm).await.unwrap();
        drop((q, s));

        fx.reopen().await;
        let q = fx.q();
        let s = fx.s();
        assert_eq!(s.subscription_state(&crm).await.unwrap(), state);
        assert_eq!(s.subscription_states().await.unwrap(), vec![(crm.clone(), state)]);
        assert_eq!(q.depth(now_ms()).await.unwrap().parked, 20);
        assert!(matches!(
            q.get(&ds[0].id).await.unwrap(),
            Some((_, Standing::Parked { .. }))
        ));
        assert!(s.set_enabled(&crm, true, None, 70).await.unwrap());
        assert_eq!(q.unpark(&crm, now_ms()).await.unwrap(), 20);
        assert_eq!(claim_all(&*q, now_ms()).await.len(), 20);
    }

    pub async fn dead_deliveries_expire_oldest_first_in_bounded_batches(fx: &mut Fixture) {
        let q = fx.q();
        let s = fx.s();
        let ids: Vec<String> = (0..6).map(|n| format!("evt_expire_{n}")).collect();
        let ds = enqueue_singles(&*q, &ids, fx.shards()).await;
        let claims = q.claim(now_ms(), LEASE, 10).await.unwrap().claims;
        assert_eq!(claims.len(), 6);
        let by_id = |id: &DeliveryId| claims.iter().find(|c| &c.delivery.id == id).unwrap().clone();
        let die = |c: Claim| {
            let mut delivery = c.delivery;
            delivery.last_error = Some("endpoint answered 500".into());
            Settlement::Dead {
                delivery,
                lease: c.lease,
            }
        };
        // Three die before the cutoff, two after it; one is parked.
        q.settle(&ds[..3].iter().map(|d| die(by_id(&d.id))).collect::<Vec<_>>())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let cutoff = now_ms();
        tokio::time::sleep(Duration::from_millis(5)).await;
        q.settle(&ds[3..5].iter().map(|d| die(by_id(&d.id))).collect::<Vec<_>>())
            .await
            .unwrap();
        let crm = SubscriptionName::parse("crm").unwrap();
        assert!(s.set_enabled(&crm, false, None, 1).await.unwrap());
        let parked = by_id(&ds[5].id);
        q.settle(&[Settlement::Park {
            id: parked.delivery.id.clone(),
            lease: parked.lease,
        }])
        .await
        .unwrap();

        let mut expired = Vec::new();
        loop {
            let batch = q.expire_dead(cutoff, 2).await.unwrap();
            assert!(batch.removed <= 2, "at most the limit: {}", batch.removed);
            assert_eq!(batch.removed, batch.deliveries.len() as u64);
            if batch.removed == 0 {
                break;
            }
            expired.extend(batch.deliveries);
        }
        let mut got: Vec<DeliveryId> = expired.iter().map(|d| d.id.clone()).collect();
        got.sort();
        let mut want: Vec<DeliveryId> = ds[..3].iter().map(|d| d.id.clone()).collect();
        want.sort();
        assert_eq!(got, want, "exactly those dead before the cutoff");
        for d in &expired {
            assert_eq!(
                d.last_error.as_deref(),
                Some("endpoint answered 500"),
                "the record as it died"
            );
            assert_eq!(d.body, ds.iter().find(|x| x.id == d.id).unwrap().body);
            assert!(q.get(&d.id).await.unwrap().is_none(), "forgotten");
            assert!(!q.replay(&d.id, now_ms()).await.unwrap(), "no longer replayable");
        }
        for d in &ds[3..5] {
            assert!(matches!(q.get(&d.id).await.unwrap(), Some((_, Standing::Dead { .. }))));
        }
        assert!(matches!(
            q.get(&ds[5].id).await.unwrap(),
            Some((_, Standing::Parked { .. }))
        ));
        let depth = q.depth(now_ms()).await.unwrap();
        assert_eq!((depth.dead, depth.parked), (2, 1));
        // Nothing dies after now: a cutoff in the future takes the rest.
        assert_eq!(q.expire_dead(now_ms() + 1, 100).await.unwrap().removed, 2);
        assert_eq!(q.depth(now_ms()).await.unwrap().dead, 0);
        assert_eq!(q.expire_dead(now_ms() + 1, 100).await.unwrap().removed, 0);
    }

    /// Each tenant's count of deliveries not yet finished: enqueued in,
    /// retried and parked still in, acked or dead out, replayed in again,
    /// and never another tenant's, nor the operator's subscriptions'
    /// deliveries of a tenant's events.
    pub async fn pending_counts_follow_each_tenants_deliveries(fx: &mut Fixture) {
        let q = fx.q();
        let acme = TenantId::parse("acme").unwrap();
        let zeta = TenantId::parse("zeta").unwrap();
        let owned =
            |id: &str, tenant: &TenantId, subscriptions: &[&str]| tenant_event(id, tenant, subscriptions, fx.shards());
        // acme: 12 events, each to its own subscription and to the
        // operator's `crm` (which acme does not own); zeta: 3.
        let mut events: Vec<NewEvent> = (0..12)
            .map(|n| owned(&format!("evt_pa{n}"), &acme, &["sub_acme1", "crm"]))
            .collect();
        events.extend((0..3).map(|n| owned(&format!("evt_pz{n}"), &zeta, &["sub_zeta1"])));
        assert!(q
            .enqueue(&events, WINDOW)
            .await
            .unwrap()
            .iter()
            .all(|r| *r == Enqueued::Accepted));
        // A duplicate counts nothing.
        assert_eq!(
            q.enqueue(&events[..1], WINDOW).await.unwrap(),
            vec![Enqueued::Duplicate]
        );
        assert_eq!(q.pending_of(&acme).await.unwrap(), 12);
        assert_eq!(q.pending_of(&zeta).await.unwrap(), 3);
        assert_eq!(q.pending_of(&TenantId::parse("nobody").unwrap()).await.unwrap(), 0);

        let t = now_ms();
        let claims = q.claim(t, LEASE, 100).await.unwrap().claims;
        assert_eq!(claims.len(), 27);
        assert_eq!(q.pending_of(&acme).await.unwrap(), 12, "leased is still pending");
        let of = |tenant: &TenantId| -> Vec<&Claim> {
            claims.iter().filter(|c| c.delivery.owner() == Some(tenant)).collect()
        };
        let (mine, theirs) = (of(&acme), of(&zeta));
        assert_eq!((mine.len(), theirs.len()), (12, 3));
        let dead = |c: &Claim| Settlement::Dead {
            delivery: c.delivery.clone(),
            lease: c.lease,
        };
        // acme: 4 acked, 3 dead, 2 retried, 2 parked, 1 left leased; the
        // operator's deliveries of its events all acked.
        let mut settlements: Vec<Settlement> = mine[..4]
            .iter()
            .map(|c| Settlement::Ack {
                id: c.delivery.id.clone(),
                lease: c.lease,
            })
            .collect();
        settlements.extend(mine[4..7].iter().map(|c| dead(c)));
        settlements.extend(mine[7..9].iter().map(|c| Settlement::Retry {
            delivery: c.delivery.clone(),
            lease: c.lease,
            due: t + 100 * LEASE_MS,
        }));
        settlements.extend(mine[9..11].iter().map(|c| Settlement::Park {
            id: c.delivery.id.clone(),
            lease: c.lease,
        }));
        settlements.extend(
            claims
                .iter()
                .filter(|c| c.delivery.owner().is_none())
                .map(|c| Settlement::Ack {
                    id: c.delivery.id.clone(),
                    lease: c.lease,
                }),
        );
        // zeta: one dead.
        settlements.push(dead(theirs[0]));
        q.settle(&settlements).await.unwrap();
        assert_eq!(q.pending_of(&acme).await.unwrap(), 5, "retrying, parked and leased");
        assert_eq!(q.pending_of(&zeta).await.unwrap(), 2);
        // A settlement whose lease is gone changes no count.
        q.settle(&[Settlement::Ack {
            id: mine[0].delivery.id.clone(),
            lease: mine[0].lease,
        }])
        .await
        .unwrap();
        assert_eq!(q.pending_of(&acme).await.unwrap(), 5);

        // A replayed dead delivery counts again; an expired one never will.
        assert!(q.replay(&mine[4].delivery.id, now_ms()).await.unwrap());
        assert_eq!(q.pending_of(&acme).await.unwrap(), 6);
        let expired = q.expire_dead(now_ms() + 1, 100).await.unwrap();
        assert_eq!(expired.removed, 3, "acme's two left dead and zeta's one");
        assert_eq!(q.pending_of(&acme).await.unwrap(), 6);
        assert_eq!(q.pending_of(&zeta).await.unwrap(), 2);

        // Unparked and then delivered, everything leaves the count.
        assert_eq!(
            q.unpark(&SubscriptionName::parse("sub_acme1").unwrap(), now_ms())
                .await
                .unwrap(),
            2
        );
        assert_eq!(q.pending_of(&acme).await.unwrap(), 6);
        drop(q);
        fx.reopen().await;
        let q = fx.q();
        assert_eq!(q.pending_of(&acme).await.unwrap(), 6, "the counts survive a restart");
        let rest = q.claim(now_ms() + 200 * LEASE_MS, LEASE, 100).await.unwrap().claims;
        assert_eq!(rest.len(), 8);
        let acks: Vec<Settlement> = rest
            .iter()
            .map(|c| Settlement::Ack {
                id: c.delivery.id.clone(),
                lease: c.lease,
            })
            .collect();
        q.settle(&acks).await.unwrap();
        assert_eq!(q.pending_of(&acme).await.unwrap(), 0);
        assert_eq!(q.pending_of(&zeta).await.unwrap(), 0);
    }

    /// Dead deliveries are read per subscription and per owning tenant
    /// from their own indexes: each scope lists exactly its own, newest
    /// first or walked in death order, and a replay or an expiry takes a
    /// delivery out of them.
    pub async fn dead_deliveries_are_read_per_subscription_and_owner(fx: &mut Fixture) {
        let q = fx.q();
        let acme = TenantId::parse("acme").unwrap();
        let zeta = TenantId::parse("zeta").unwrap();
        let owned =
            |id: &str, tenant: &TenantId, subscriptions: &[&str]| tenant_event(id, tenant, subscriptions, fx.shards());
        let mut events: Vec<NewEvent> = (0..5)
            .map(|n| owned(&format!("evt_da{n}"), &acme, &["sub_acme1", "crm"]))
            .collect();
        events.extend((0..3).map(|n| owned(&format!("evt_dz{n}"), &zeta, &["sub_zeta1"])));
        q.enqueue(&events, WINDOW).await.unwrap();
        let claims = q.claim(now_ms(), LEASE, 100).await.unwrap().claims;
        assert_eq!(claims.len(), 13);
        // They die one settle call at a time, so their death times are in
        // this order (ties by id).
        for c in &claims {
            q.settle(&[Settlement::Dead {
                delivery: c.delivery.clone(),
                lease: c.lease,
            }])
            .await
            .unwrap();
        }
        let ids_in = |scope: DeadScope| {
            let q = q.clone();
            async move {
                let mut ids: Vec<DeliveryId> = q
                    .dead_in(&scope, 100)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|d| d.id)
                    .collect();
                ids.sort();
                ids
            }
        };
        let want = |f: &dyn Fn(&Delivery) -> bool| {
            let mut ids: Vec<DeliveryId> = claims
                .iter()
                .map(|c| &c.delivery)
                .filter(|d| f(d))
                .map(|d| d.id.clone())
                .collect();
            ids.sort();
            ids
        };
        let sub = |name: &str| DeadScope::Subscription(SubscriptionName::parse(name).unwrap());
        assert_eq!(
            ids_in(sub("sub_acme1")).await,
            want(&|d| d.subscription.as_str() == "sub_acme1")
        );
        assert_eq!(ids_in(sub("crm")).await, want(&|d| d.subscription.as_str() == "crm"));
        assert_eq!(
            ids_in(DeadScope::Owner(acme.clone())).await,
            want(&|d| d.subscription.as_str() == "sub_acme1"),
            "the operator's deliveries of acme's events are not acme's"
        );
        assert_eq!(
            ids_in(DeadScope::Owner(zeta.clone())).await,
            want(&|d| d.owner() == Some(&zeta))
        );
        assert!(ids_in(DeadScope::Owner(TenantId::parse("nobody").unwrap()))
            .await
            .is_empty());

        // Newest first, like the whole listing.
        let all = q.dead(100).await.unwrap();
        let newest: Vec<DeliveryId> = q
            .dead_in(&DeadScope::Owner(acme.clone()), 2)
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.id)
            .collect();
        let want_newest: Vec<DeliveryId> = all
            .iter()
            .filter(|d| d.owner() == Some(&acme))
            .take(2)
            .map(|d| d.id.clone())
            .collect();
        assert_eq!(newest, want_newest);

        // A walk in pages visits each of the scope's once, in death order.
        let mut walked = Vec::new();
        let mut after: Option<(Millis, DeliveryId)> = None;
        loop {
            let page = q
                .dead_in_after(&sub("sub_zeta1"), after.as_ref().map(|(at, id)| (*at, id)), 2)
                .await
                .unwrap();
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 2);
            for (at, d) in page {
                assert_eq!(d.subscription.as_str(), "sub_zeta1");
                after = Some((at, d.id.clone()));
                walked.push(d.id);
            }
        }
        let in_order: Vec<DeliveryId> = q
            .dead_after(None, 100)
            .await
            .unwrap()
            .into_iter()
            .filter(|(_, d)| d.subscription.as_str() == "sub_zeta1")
            .map(|(_, d)| d.id)
            .collect();
        assert_eq!(walked, in_order);

        // Replayed, a delivery leaves its scopes; dying again, it is back.
        let first = claims
            .iter()
            .find(|c| c.delivery.subscription.as_str() == "sub_acme1")
            .unwrap();
        assert!(q.replay(&first.delivery.id, now_ms()).await.unwrap());
        assert_eq!(ids_in(DeadScope::Owner(acme.clone())).await.len(), 4);
        assert_eq!(ids_in(sub("sub_acme1")).await.len(), 4);
        drop(q);
        fx.reopen().await;
        let q = fx.q();
        assert_eq!(
            q.dead_in(&DeadScope::Owner(acme.clone()), 100).await.unwrap().len(),
            4,
            "kept across a restart"
        );
        let again = q.claim(now_ms(), LEASE, 100).await.unwrap().claims;
        assert_eq!(again.len(), 1);
        q.settle(&[Settlement::Dead {
            delivery: again[0].delivery.clone(),
            lease: again[0].lease,
        }])
        .await
        .unwrap();
        assert_eq!(q.dead_in(&DeadScope::Owner(acme.clone()), 100).await.unwrap().len(), 5);

        // Expired, they leave every scope.
        assert_eq!(q.expire_dead(now_ms() + 1, 100).await.unwrap().removed, 13);
        for scope in [
            sub("sub_acme1"),
            sub("crm"),
            sub("sub_zeta1"),
            DeadScope::Owner(acme),
            DeadScope::Owner(zeta),
        ] {
            assert!(q.dead_in(&scope, 100).await.unwrap().is_empty(), "{scope:?}");
            assert!(
                q.dead_in_after(&scope, None, 100).await.unwrap().is_empty(),
                "{scope:?}"
            );
        }
    }
}

macro_rules! case {
    ($open:path, $case:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let mut fx = Fixture::open($open(stringify!($case))).await;
            cases::$case(&mut fx).await;
        }
    };
}

/// Instantiates every case for one backend.
macro_rules! conformance {
    ($backend:ident, $open:path) => {
        mod $backend {
            use super::*;
            case!($open, enqueue_then_claim_keeps_the_body);
            case!($open, duplicates_within_the_window_queue_nothing);
            case!($open, ids_are_accepted_again_after_the_window);
            case!($open, events_without_deliveries_are_remembered);
            case!($open, dedup_keys_of_their_own_dedup_apart_from_event_ids);
            case!($open, claims_respect_max_and_due_order_across_shards);
            case!($open, claims_let_owners_take_turns);
            case!($open, claims_of_one_alternate_between_owners);
            case!($open, claims_are_invisible_until_the_lease_ends);
            case!($open, stale_leases_settle_nothing);
            case!($open, ack_removes);
            case!($open, retry_stores_the_record_and_falls_due_later);
            case!($open, defer_keeps_the_record);
            case!($open, dead_deliveries_are_listed_and_replayable);
            case!($open, dead_walk_visits_each_once_in_death_order);
            case!($open, dead_deliveries_expire_oldest_first_in_bounded_batches);
            case!($open, reschedule_needs_the_current_due);
            case!($open, rate_limit_buckets_grant_the_burst_then_the_rate);
            case!($open, depth_counts_due_scheduled_and_dead);
            case!($open, next_due_is_reported_when_nothing_is_due);
            case!($open, concurrent_claimers_never_share_a_delivery);
            case!($open, data_survives_a_restart);
            case!($open, misplaced_deliveries_are_refused);
            case!($open, parking_needs_the_current_lease);
            case!($open, unparked_deliveries_come_back_in_created_order);
            case!($open, unparking_thousands_loses_nothing);
            case!($open, unpark_races_claimers_without_loss_or_duplicates);
            case!($open, subscription_state_defaults_and_toggles);
            case!($open, health_is_counted_by_the_rules);
            case!($open, parking_and_state_survive_a_restart);
            case!($open, pending_counts_follow_each_tenants_deliveries);
            case!($open, dead_deliveries_are_read_per_subscription_and_owner);
        }
    };
}

conformance!(redis, Home::redis);
conformance!(redis_cluster, Home::redis_cluster);
conformance!(embedded, Home::embedded);

/// What only the Redis backend does.
mod redis_only {
    use super::*;

    /// A store whose dead deliveries died before the per-scope indexes
    /// existed has them filed when a process connects, once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dead_deliveries_of_an_older_store_are_filed_on_connect() {
        let fx = Fixture::open(Home::redis("dead_filing")).await;
        let Home::Redis(server) = &fx.home else { unreachable!() };
        let q = fx.q();
        let acme = TenantId::parse("acme").unwrap();
        let events: Vec<NewEvent> = (0..700)
            .map(|n| tenant_event(&format!("evt_old{n}"), &acme, &["sub_acme1"], fx.shards()))
            .collect();
        q.enqueue(&events, WINDOW).await.unwrap();
        let claims = q.claim(now_ms(), LEASE, 1000).await.unwrap().claims;
        let deaths: Vec<Settlement> = claims
            .iter()
            .map(|c| Settlement::Dead {
                delivery: c.delivery.clone(),
                lease: c.lease,
            })
            .collect();
        q.settle(&deaths).await.unwrap();
        // As an older hookd left it: no indexes, no owners, no marker.
        let client = ::redis::Client::open(server.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let prefix = &fx.config.key_prefix;
        for pattern in [format!("{prefix}:*:dead_by*"), format!("{prefix}:*:owner")] {
            let keys: Vec<String> = ::redis::cmd("KEYS").arg(&pattern).query_async(&mut conn).await.unwrap();
            assert!(!keys.is_empty(), "{pattern}");
            let _: () = ::redis::cmd("DEL").arg(&keys).query_async(&mut conn).await.unwrap();
        }
        let scope = DeadScope::Owner(acme.clone());
        assert!(q.dead_in(&scope, 1000).await.unwrap().is_empty());
        let again = RedisQueue::connect(&fx.config).await.unwrap();
        assert_eq!(again.dead_in(&scope, 1000).await.unwrap().len(), 700);
        let sub = DeadScope::Subscription(SubscriptionName::parse("sub_acme1").unwrap());
        assert_eq!(again.dead_in_after(&sub, None, 1000).await.unwrap().len(), 700);
    }

    /// A store whose due deliveries were queued before lanes existed has
    /// them filed in lanes when a process connects: the owners take turns
    /// from then on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn due_deliveries_of_an_older_store_are_filed_in_lanes_on_connect() {
        let fx = Fixture::open(Home::redis("lane_filing")).await;
        let Home::Redis(server) = &fx.home else { unreachable!() };
        let q = fx.q();
        let zeta = backlog_then_one(&*q, fx.shards()).await;
        // As an older hookd left it: no lanes, no marker.
        let client = ::redis::Client::open(server.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let pattern = format!("{}:*:lanes*", fx.config.key_prefix);
        let keys: Vec<String> = ::redis::cmd("KEYS").arg(&pattern).query_async(&mut conn).await.unwrap();
        assert!(
            keys.len() > fx.shards() as usize,
            "lanes, their sets and markers: {keys:?}"
        );
        let _: () = ::redis::cmd("DEL").arg(&keys).query_async(&mut conn).await.unwrap();
        assert!(!claims_in_ten(&*q, &zeta).await, "with no lanes, the oldest go first");
        let again = RedisQueue::connect(&fx.config).await.unwrap();
        assert!(claims_in_ten(&again, &zeta).await, "filed, zeta takes its turn");
    }

    #[tokio::test]
    async fn connect_errors_name_the_host_but_not_the_password() {
        let port = support::free_port();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("redis://hookd:hunter2@127.0.0.1:{port}/0");
        let config = queue_config(&unique_prefix("connect"), Some(&url), dir.path());
        let err = RedisQueue::connect(&config).await.err().expect("nothing listens there");
        let text = err.to_string();
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        assert!(text.contains("check"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_wait_for_the_configured_response_timeout() {
        let mut fx = Fixture::open(Home::redis("response_timeout")).await;
        let Home::Redis(server) = &fx.home else { unreachable!() };
        let port = server.port();
        // The default (5 s) rides out a 1.5 s stall that redis-rs's own
        // default (500 ms) would have turned into a failure.
        let q = fx.q();
        let busy = support::stall_redis(port, 1_500).await;
        q.depth(now_ms())
            .await
            .expect("a slow answer within the timeout is an answer");
        busy.await.unwrap();

        // A shorter one gives up, and says on which host.
        fx.config.redis_response_timeout = Duration::from_millis(200);
        let short = RedisQueue::connect(&fx.config).await.unwrap();
        let busy = support::stall_redis(port, 1_500).await;
        let started = std::time::Instant::now();
        let err = short
            .depth(now_ms())
            .await
            .expect_err("the stall outlasts 200 ms")
            .to_string();
        assert!(
            started.elapsed() < Duration::from_millis(1_300),
            "gave up at the timeout"
        );
        assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
        busy.await.unwrap();

        // Connections Redis dropped leave the pool (they are not checked
        // before each use): after a restart the same queue works again,
        // at worst after one failure per pooled connection.
        drop(short);
        fx.home.restart();
        let mut answered = false;
        for _ in 0..=fx.config.pool_size {
            if q.depth(now_ms()).await.is_ok() {
                answered = true;
                break;
            }
        }
        assert!(answered, "the queue reconnects after Redis restarts");
    }

    #[tokio::test]
    async fn corrupt_records_are_reported_and_skipped() {
        let fx = Fixture::open(Home::redis("corrupt")).await;
        let q = fx.q();
        let d = enqueue_singles(&*q, &["evt_corrupt".into()], fx.shards())
            .await
            .remove(0);
        let Home::Redis(server) = &fx.home else { unreachable!() };
        let key = hookd::queue::redis::records_key(&fx.config.key_prefix, d.id.shard());
        assert_eq!(server.command(&["HSET", &key, d.id.as_str(), "{not json"]), "0");

        let err = q.get(&d.id).await.unwrap_err();
        assert!(
            matches!(&err, Error::Corrupt { id, .. } if id == d.id.as_str()),
            "{err}"
        );
        let t = now_ms();
        let claimed = q.claim(t, LEASE, 10).await.unwrap();
        assert!(claimed.claims.is_empty(), "a corrupt record is not handed out");

        // Parking needs the record's subscription: a corrupt one stays
        // leased (its lease token is its score, in Redis's clock).
        let due = hookd::queue::redis::due_key(&fx.config.key_prefix, d.id.shard());
        let leased = server.command(&["ZSCORE", &due, d.id.as_str()]);
        let token: Millis = leased.parse().expect("a leased score");
        assert!(token >= t + LEASE_MS - 5_000, "leased until {token}, claimed at {t}");
        q.settle(&[Settlement::Park {
            id: d.id.clone(),
            lease: Lease(token),
        }])
        .await
        .unwrap();
        assert_eq!(server.command(&["ZSCORE", &due, d.id.as_str()]), leased);
        assert_eq!(q.depth(t).await.unwrap().parked, 0);
    }

    #[tokio::test]
    async fn corrupt_subscription_state_is_reported() {
        let fx = Fixture::open(Home::redis("corrupt_state")).await;
        let s = fx.s();
        let crm = SubscriptionName::parse("crm").unwrap();
        assert!(s.set_enabled(&crm, false, None, 1).await.unwrap());
        let Home::Redis(server) = &fx.home else { unreachable!() };
        let key = hookd::queue::redis::subscription_key(&fx.config.key_prefix, &crm);
        assert_eq!(server.command(&["HSET", &key, "since", "yesterday"]), "0");
        let err = s.subscription_state(&crm).await.unwrap_err();
        assert!(
            matches!(&err, Error::CorruptState { subscription, .. } if subscription == "crm"),
            "{err}"
        );
        assert!(err.to_string().contains("since"), "{err}");
        assert!(s.subscription_states().await.is_err());
    }

    /// Two `RedisQueue`s on one Redis, as two hookd processes would be.
    async fn processes_share_state_and_parking(fx: Fixture) {
        let s = fx.s();
        let first = fx.q();
        let second = Backend::new(Arc::new(
            RedisQueue::connect(&fx.config).await.expect("second connection"),
        ));
        let crm = SubscriptionName::parse("crm").unwrap();

        assert!(s.set_enabled(&crm, false, Some("410 Gone".into()), 10).await.unwrap());
        let seen = second.state.subscription_state(&crm).await.unwrap();
        assert!(!seen.enabled);
        assert_eq!(seen.reason.as_deref(), Some("410 Gone"));
        assert!(
            !second.state.set_enabled(&crm, false, None, 20).await.unwrap(),
            "already disabled"
        );

        // Health from both, concurrently, adds up.
        let tasks: Vec<_> = (0..20)
            .map(|n| {
                let store = if n % 2 == 0 { s.clone() } else { second.state.clone() };
                let crm = crm.clone();
                tokio::spawn(async move {
                    let update = HealthUpdate {
                        subscription: crm,
                        successes: 0,
                        failures: 1,
                        last_outcome_success: false,
                        last_success_at: None,
                        last_failure_at: Some(100 + n),
                    };
                    store.record_health(&[update]).await.expect("record health");
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let state = s.subscription_state(&crm).await.unwrap();
        assert_eq!(state.consecutive_failures, 20);
        assert_eq!(state.last_failure_at, Some(119));
        assert_eq!(
            second.state.subscription_states().await.unwrap(),
            vec![(crm.clone(), state)]
        );

        // One parks, the other unparks.
        let ids: Vec<String> = (0..30).map(|n| format!("evt_two_{n}")).collect();
        enqueue_singles(&*first, &ids, fx.shards()).await;
        let claimed = first.claim(now_ms(), LEASE, 100).await.unwrap().claims;
        let parks: Vec<Settlement> = claimed
            .iter()
            .map(|c| Settlement::Park {
                id: c.delivery.id.clone(),
                lease: c.lease,
            })
            .collect();
        first.settle(&parks).await.unwrap();
        assert_eq!(second.queue.depth(now_ms()).await.unwrap().parked, 30);
        assert!(second.state.set_enabled(&crm, true, None, 200).await.unwrap());
        assert_eq!(s.subscription_state(&crm).await.unwrap().consecutive_failures, 0);
        assert_eq!(second.queue.unpark(&crm, now_ms()).await.unwrap(), 30);
        assert_eq!(first.claim(now_ms(), LEASE, 100).await.unwrap().claims.len(), 30);
    }

    /// Leases and due times follow Redis's clock, not the processes': one
    /// whose clock runs two minutes ahead takes nothing another still
    /// holds, one two minutes behind still claims what is due, and a retry
    /// a skewed process schedules one second out falls due one second out.
    async fn leases_follow_the_redis_clock(fx: Fixture) {
        const SKEW: Millis = 120_000;
        let q = fx.q();
        let ahead = RedisQueue::connect(&fx.config).await.unwrap().with_clock_skew(SKEW);
        let behind = RedisQueue::connect(&fx.config).await.unwrap().with_clock_skew(-SKEW);
        let ids: Vec<String> = (0..2).map(|n| format!("evt_skew_{n}")).collect();
        enqueue_singles(&*q, &ids, fx.shards()).await;

        assert_eq!(
            behind.depth(now_ms() - SKEW).await.unwrap().due,
            2,
            "counted by Redis's clock"
        );
        let held = behind.claim(now_ms() - SKEW, LEASE, 1).await.unwrap();
        assert_eq!(held.claims.len(), 1, "a clock behind still sees what is due");
        let held = held.claims.into_iter().next().unwrap();

        let taken = ahead.claim(now_ms() + SKEW, LEASE, 10).await.unwrap().claims;
        assert_eq!(
            ids_of(&taken).len(),
            1,
            "a clock ahead takes only the free delivery, not the one leased for {LEASE:?}"
        );
        assert_ne!(taken[0].delivery.id, held.delivery.id);
        let next = q.claim(now_ms(), LEASE, 10).await.unwrap();
        assert!(next.claims.is_empty());
        let depth = ahead.depth(now_ms() + SKEW).await.unwrap();
        assert_eq!((depth.due, depth.scheduled), (0, 2), "both leased, by Redis's clock");

        // The retry the fast clock asks for in 1 s falls due in 1 s.
        let mut retried = taken[0].delivery.clone();
        retried.attempts = 1;
        ahead
            .settle(&[Settlement::Retry {
                delivery: retried,
                lease: taken[0].lease,
                due: now_ms() + SKEW + 1_000,
            }])
            .await
            .unwrap();
        let again = q.claim(now_ms() + 2_000, LEASE, 10).await.unwrap().claims;
        assert_eq!(ids_of(&again), vec![taken[0].delivery.id.clone()]);

        // The slow clock's settlement still holds its lease.
        behind
            .settle(&[Settlement::Ack {
                id: held.delivery.id.clone(),
                lease: held.lease,
            }])
            .await
            .unwrap();
        assert!(q.get(&held.delivery.id).await.unwrap().is_none(), "acked");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leases_follow_the_redis_clock_not_the_process() {
        leases_follow_the_redis_clock(Fixture::open(Home::redis("clock_skew")).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leases_follow_the_redis_clock_on_a_cluster() {
        leases_follow_the_redis_clock(Fixture::open(Home::redis_cluster("clock_skew_cluster")).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_processes_share_state_and_parking() {
        processes_share_state_and_parking(Fixture::open(Home::redis("two_processes")).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_processes_share_state_and_parking_on_a_cluster() {
        processes_share_state_and_parking(Fixture::open(Home::redis_cluster("two_processes_cluster")).await).await;
    }
}

/// What only the embedded backend does.
mod embedded_only {
    use super::*;

    /// A store whose dead deliveries died before the per-scope index
    /// existed has them filed when it is opened.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dead_deliveries_of_an_older_store_are_filed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let config = queue_config(&unique_prefix("filing"), None, dir.path());
        let acme = TenantId::parse("acme").unwrap();
        {
            let q = EmbeddedQueue::open(&config).unwrap();
            let events: Vec<NewEvent> = (0..30)
                .map(|n| tenant_event(&format!("evt_old{n}"), &acme, &["sub_acme1"], config.shards))
                .collect();
            q.enqueue(&events, WINDOW).await.unwrap();
            let claims = q.claim(now_ms(), LEASE, 100).await.unwrap().claims;
            let deaths: Vec<Settlement> = claims
                .iter()
                .map(|c| Settlement::Dead {
                    delivery: c.delivery.clone(),
                    lease: c.lease,
                })
                .collect();
            q.settle(&deaths).await.unwrap();
        }
        // As an older hookd left it: no index table.
        {
            let db = redb::Database::open(dir.path().join(hookd::queue::embedded::FILE_NAME)).unwrap();
            let txn = db.begin_write().unwrap();
            let existed = txn
                .delete_table(redb::TableDefinition::<(&str, i64, &str), ()>::new("dead_by"))
                .unwrap();
            assert!(existed, "the index table is what this store has");
            txn.commit().unwrap();
        }
        let q = EmbeddedQueue::open(&config).unwrap();
        assert_eq!(q.dead_in(&DeadScope::Owner(acme), 100).await.unwrap().len(), 30);
    }

    /// A store whose due deliveries were queued before lanes existed has
    /// them filed in lanes when it is opened.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn due_deliveries_of_an_older_store_are_filed_in_lanes_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let config = queue_config(&unique_prefix("lane_filing"), None, dir.path());
        let zeta = {
            let q = EmbeddedQueue::open(&config).unwrap();
            backlog_then_one(&q, config.shards).await
        };
        // As an older hookd left it: no lane tables.
        {
            let db = redb::Database::open(dir.path().join(hookd::queue::embedded::FILE_NAME)).unwrap();
            let txn = db.begin_write().unwrap();
            for name in ["lane_due", "lane_heads", "lane_head"] {
                let existed = match name {
                    "lane_due" => txn.delete_table(redb::TableDefinition::<(&str, i64, &str), ()>::new(name)),
                    "lane_heads" => txn.delete_table(redb::TableDefinition::<(i64, &str), ()>::new(name)),
                    _ => txn.delete_table(redb::TableDefinition::<&str, (i64, i64)>::new(name)),
                }
                .unwrap();
                assert!(existed, "{name} is what this store has");
            }
            txn.commit().unwrap();
        }
        let q = EmbeddedQueue::open(&config).unwrap();
        assert!(claims_in_ten(&q, &zeta).await, "filed, zeta takes its turn");
    }

    #[tokio::test]
    async fn a_second_open_of_the_same_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = queue_config(&unique_prefix("twice"), None, dir.path());
        let first = EmbeddedQueue::open(&config).unwrap();
        let err = EmbeddedQueue::open(&config).err().expect("the dir is in use");
        assert!(matches!(err, Error::InUse { .. }), "{err}");
        assert!(err.to_string().contains("is in use by another hookd process"), "{err}");
        drop(first);
        EmbeddedQueue::open(&config).expect("free again once the first is closed");
    }

    /// Set in the child process of [`accepted_events_survive_a_crash`]: the
    /// store directory it fills before aborting.
    const CRASH_DIR_VAR: &str = "HOOKD_TEST_CRASH_DIR";

    #[test]
    fn accepted_events_survive_a_crash() {
        let ids: Vec<String> = (0..100).map(|n| format!("evt_crash_{n}")).collect();
        if let Ok(dir) = std::env::var(CRASH_DIR_VAR) {
            // The child: enqueue, settle some without fsync, then die hard.
            let config = queue_config("crash", None, std::path::Path::new(&dir));
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let q = EmbeddedQueue::open(&config).unwrap();
                enqueue_singles(&q, &ids, config.shards).await;
                let claimed = q.claim(now_ms(), LEASE, 10).await.unwrap();
                let acks: Vec<Settlement> = claimed
                    .claims
                    .iter()
                    .map(|c| Settlement::Ack {
                        id: c.delivery.id.clone(),
                        lease: c.lease,
                    })
                    .collect();
                q.settle(&acks).await.unwrap();
                println!("enqueued");
                std::process::abort();
            });
        }
        let dir = tempfile::tempdir().unwrap();
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "embedded_only::accepted_events_survive_a_crash",
                "--nocapture",
            ])
            .env(CRASH_DIR_VAR, dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(!output.status.success(), "the child should have aborted");
        assert!(
            stdout.contains("enqueued"),
            "the child did not get to enqueue: {stdout}"
        );

        let config = queue_config("crash", None, dir.path());
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let q = EmbeddedQueue::open(&config).expect("reopen after a crash");
            let depth = q.depth(now_ms() + 10 * LEASE_MS).await.unwrap();
            // Acks may be lost in a crash (at least once), enqueues may not.
            assert!((90..=100).contains(&depth.due), "{depth:?}");
            let again: Vec<NewEvent> = ids.iter().map(|id| event(id, &["crm"], config.shards)).collect();
            let results = q.enqueue(&again, WINDOW).await.unwrap();
            assert!(results.iter().all(|r| *r == Enqueued::Duplicate), "{results:?}");
        });
    }
}
