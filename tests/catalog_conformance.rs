//! One suite, written once against `dyn CatalogStore`, run against every
//! backend: Redis (a real redis-server per test), Redis Cluster (one node
//! owning all slots) and the embedded store (a temp dir per test).

mod support;

use std::sync::Arc;

use hookd::catalog::store::embedded::EmbeddedCatalog;
use hookd::catalog::store::redis::RedisCatalog;
use hookd::catalog::store::{CatalogStore, Contents, Error, Kind, Record, Write, MAX_ID};
use hookd::config::QueueConfig;
use hookd::model::Millis;
use support::{queue_config, unique_prefix, Home};

/// A body that is not UTF-8 (nor JSON): stores must keep bytes, not text.
const RAW: &[u8] = &[0xff, 0x00, 0xfe, b'{', 0x80, b'\n', 0xc3];

/// A backend under test.
struct Fixture {
    /// How to open the store again.
    config: QueueConfig,
    /// Its data.
    home: Home,
    /// The open store.
    store: Option<Arc<dyn CatalogStore>>,
}

impl Fixture {
    async fn open((config, home): (QueueConfig, Home)) -> Fixture {
        let mut fx = Fixture {
            config,
            home,
            store: None,
        };
        fx.store = Some(fx.connect().await);
        fx
    }

    /// A new client of the backend: for Redis another connection pool, for
    /// the embedded store the file opened again (only possible while no
    /// other handle holds it).
    async fn connect(&self) -> Arc<dyn CatalogStore> {
        match self.home {
            Home::Redis(_) => Arc::new(
                RedisCatalog::connect(&self.config)
                    .await
                    .expect("connect to the test redis"),
            ),
            Home::Embedded { .. } => {
                Arc::new(EmbeddedCatalog::open(&self.config).expect("open the embedded catalogue"))
            }
        }
    }

    fn c(&self) -> Arc<dyn CatalogStore> {
        self.store.clone().expect("catalogue is open")
    }

    /// Closes the store, restarts Redis (from its append-only file), and
    /// opens the store again.
    async fn reopen(&mut self) {
        let store = self.store.take().expect("catalogue is open");
        assert_eq!(Arc::strong_count(&store), 1, "a test still holds the catalogue");
        drop(store);
        self.home.restart();
        self.store = Some(self.connect().await);
    }
}

fn record(kind: Kind, id: &str, body: &[u8]) -> Record {
    Record {
        kind,
        id: id.to_owned(),
        body: body.to_vec(),
    }
}

fn create(kind: Kind, id: &str, body: &[u8]) -> Write {
    Write::Create(record(kind, id, body))
}

fn put(kind: Kind, id: &str, body: &[u8]) -> Write {
    Write::Put(record(kind, id, body))
}

fn delete(kind: Kind, id: &str) -> Write {
    Write::Delete {
        kind,
        id: id.to_owned(),
    }
}

/// The (kind, id) of every record loaded, in the order loaded.
async fn ids(c: &dyn CatalogStore) -> Vec<(Kind, String)> {
    let contents = c.load().await.expect("load");
    contents.records.into_iter().map(|r| (r.kind, r.id)).collect()
}

/// Uses sorted by key id, for comparing.
async fn sorted_uses(c: &dyn CatalogStore) -> Vec<(String, Millis)> {
    let mut uses = c.uses().await.expect("uses");
    uses.sort();
    uses
}

mod cases {
    use super::*;

    pub async fn a_new_store_is_version_0_and_empty(fx: &mut Fixture) {
        let c = fx.c();
        assert_eq!(c.version().await.unwrap(), 0);
        assert_eq!(c.load().await.unwrap(), Contents::default());
        assert!(c.uses().await.unwrap().is_empty());
    }

    pub async fn created_records_load_byte_for_byte_sorted_by_kind_then_id(fx: &mut Fixture) {
        let c = fx.c();
        // Written out of order; `event_type` and `key` sort before
        // `tenant` by name, but kinds sort in `Kind::ALL` order.
        let writes = vec![
            create(Kind::EventType, "order.paid", br#"{"name":"order.paid"}"#),
            create(Kind::Subscription, "sub_b", RAW),
            create(Kind::Key, "key_1", b""),
            create(Kind::Tenant, "t9", b"{}"),
            create(Kind::Subscription, "sub_a", b"{\"a\":1}"),
            create(Kind::Tenant, "t10", "{\"name\":\"Grüße\"}".as_bytes()),
        ];
        assert_eq!(c.apply(&writes).await.unwrap(), 1);
        let contents = c.load().await.unwrap();
        assert_eq!(contents.version, 1);
        let mut expected: Vec<Record> = writes
            .iter()
            .map(|w| match w {
                Write::Create(r) => r.clone(),
                other => panic!("not a create: {other:?}"),
            })
            .collect();
        expected.sort_by(|a, b| {
            let rank = |k: Kind| Kind::ALL.iter().position(|&x| x == k);
            (rank(a.kind), &a.id).cmp(&(rank(b.kind), &b.id))
        });
        assert_eq!(contents.records, expected);
        assert_eq!(
            contents
                .records
                .iter()
                .map(|r| (r.kind, r.id.as_str()))
                .collect::<Vec<_>>(),
            vec![
                (Kind::Tenant, "t10"),
                (Kind::Tenant, "t9"),
                (Kind::Key, "key_1"),
                (Kind::Subscription, "sub_a"),
                (Kind::Subscription, "sub_b"),
                (Kind::EventType, "order.paid"),
            ]
        );
        let raw = contents.records.iter().find(|r| r.id == "sub_b").expect("sub_b loaded");
        assert_eq!(raw.body, RAW, "the non-UTF-8 body came back changed");
    }

    pub async fn versions_bump_once_per_apply_and_not_for_an_empty_one(fx: &mut Fixture) {
        let c = fx.c();
        assert_eq!(c.apply(&[]).await.unwrap(), 0, "an empty apply on a new store");
        assert_eq!(c.version().await.unwrap(), 0);
        assert_eq!(c.apply(&[create(Kind::Tenant, "t1", b"1")]).await.unwrap(), 1);
        let three = [
            put(Kind::Tenant, "t2", b"2"),
            put(Kind::Tenant, "t3", b"3"),
            delete(Kind::Tenant, "t1"),
        ];
        assert_eq!(c.apply(&three).await.unwrap(), 2, "three writes, one bump");
        assert_eq!(c.version().await.unwrap(), 2);
        assert_eq!(c.apply(&[]).await.unwrap(), 2, "an empty apply returns the version");
        assert_eq!(c.version().await.unwrap(), 2);
        assert_eq!(c.load().await.unwrap().version, 2);
        let mut last = 2;
        for n in 0..5 {
            let v = c
                .apply(&[put(Kind::Key, "key_1", format!("{n}").as_bytes())])
                .await
                .unwrap();
            assert!(v > last, "version {v} after {last}");
            last = v;
        }
        assert_eq!(c.version().await.unwrap(), last);
    }

    pub async fn a_create_of_an_existing_record_refuses_the_whole_call(fx: &mut Fixture) {
        let c = fx.c();
        let v = c
            .apply(&[
                create(Kind::Subscription, "sub_1", b"old"),
                create(Kind::Tenant, "t0", b"t0"),
            ])
            .await
            .unwrap();
        assert_eq!(v, 1);
        let before = c.load().await.unwrap();
        let err = c
            .apply(&[
                put(Kind::Tenant, "t1", b"would be new"),
                delete(Kind::Tenant, "t0"),
                put(Kind::Key, "key_1", b"new"),
                create(Kind::Subscription, "sub_1", b"new"),
                create(Kind::EventType, "a.b", b"new"),
            ])
            .await
            .expect_err("sub_1 exists");
        match &err {
            Error::Exists { kind, id } => {
                assert_eq!((*kind, id.as_str()), (Kind::Subscription, "sub_1"), "{err}");
            }
            other => panic!("wanted Exists, got {other:?}"),
        }
        let text = err.to_string();
        assert!(text.contains("subscription") && text.contains("sub_1"), "{text}");
        assert_eq!(c.version().await.unwrap(), 1, "a refused call must not bump");
        assert_eq!(c.load().await.unwrap(), before, "a refused call must write nothing");
        // A different kind with the same id is another record.
        assert_eq!(c.apply(&[create(Kind::Tenant, "sub_1", b"t")]).await.unwrap(), 2);
    }

    pub async fn an_expectation_not_met_refuses_the_whole_call(fx: &mut Fixture) {
        let c = fx.c();
        let expect = |kind, id: &str, body: Option<&[u8]>| Write::Expect {
            kind,
            id: id.to_owned(),
            body: body.map(<[u8]>::to_vec),
        };
        c.apply(&[put(Kind::Subscription, "sub_1", b"v1")]).await.unwrap();
        // Met: absent, and a record as stored, byte for byte.
        let v = c
            .apply(&[
                expect(Kind::Revision, "acme", None),
                put(Kind::Revision, "acme", b"1"),
                expect(Kind::Subscription, "sub_1", Some(b"v1")),
                put(Kind::Subscription, "sub_1", b"v2"),
            ])
            .await
            .unwrap();
        assert_eq!(v, 2);
        let before = c.load().await.unwrap();
        // Not met: a body that changed, a record that exists, one that does
        // not; each refuses everything, naming the record, bumping nothing.
        for (guard, id) in [
            (expect(Kind::Subscription, "sub_1", Some(b"v1")), "sub_1"),
            (expect(Kind::Revision, "acme", None), "acme"),
            (expect(Kind::Tenant, "gone", Some(b"x")), "gone"),
        ] {
            let err = c
                .apply(&[
                    put(Kind::Key, "key_1", b"k"),
                    guard,
                    put(Kind::Subscription, "sub_1", b"v3"),
                ])
                .await
                .expect_err("the expectation is not met");
            assert!(
                matches!(&err, Error::Changed { id: found, .. } if found == id),
                "{err:?}"
            );
            assert!(err.to_string().contains("changed meanwhile"), "{err}");
            assert_eq!(c.load().await.unwrap(), before, "a refused call must write nothing");
        }
        // An expectation is of the store before the call, not of the
        // writes before it in the call; and it writes nothing itself.
        let err = c
            .apply(&[put(Kind::Tenant, "t", b"new"), expect(Kind::Tenant, "t", Some(b"new"))])
            .await
            .expect_err("t is absent before the call");
        assert!(matches!(err, Error::Changed { .. }), "{err:?}");
        assert_eq!(c.version().await.unwrap(), 2);
    }

    pub async fn creates_see_the_earlier_writes_of_their_call(fx: &mut Fixture) {
        let c = fx.c();
        let err = c
            .apply(&[create(Kind::Key, "key_1", b"a"), create(Kind::Key, "key_1", b"b")])
            .await
            .expect_err("the second create meets the first");
        assert!(
            matches!(&err, Error::Exists { kind: Kind::Key, id } if id == "key_1"),
            "{err:?}"
        );
        assert_eq!(c.load().await.unwrap(), Contents::default());
        assert_eq!(c.apply(&[create(Kind::Key, "key_1", b"a")]).await.unwrap(), 1);
        // Deleted earlier in the call: the create applies, in order.
        let v = c
            .apply(&[delete(Kind::Key, "key_1"), create(Kind::Key, "key_1", b"again")])
            .await
            .unwrap();
        assert_eq!(v, 2);
        assert_eq!(
            c.load().await.unwrap().records,
            vec![record(Kind::Key, "key_1", b"again")]
        );
        let err = c
            .apply(&[put(Kind::Key, "key_2", b"p"), create(Kind::Key, "key_2", b"c")])
            .await
            .expect_err("put earlier in the call");
        assert!(matches!(&err, Error::Exists { id, .. } if id == "key_2"), "{err:?}");
        assert_eq!(c.version().await.unwrap(), 2);
    }

    pub async fn put_adds_and_replaces(fx: &mut Fixture) {
        let c = fx.c();
        c.apply(&[put(Kind::Tenant, "t1", b"first")]).await.unwrap();
        assert_eq!(
            c.load().await.unwrap().records,
            vec![record(Kind::Tenant, "t1", b"first")]
        );
        let v = c.apply(&[put(Kind::Tenant, "t1", RAW)]).await.unwrap();
        assert_eq!(v, 2);
        let contents = c.load().await.unwrap();
        assert_eq!(contents.version, 2);
        assert_eq!(contents.records, vec![record(Kind::Tenant, "t1", RAW)]);
        // The last of two puts in one call wins.
        c.apply(&[put(Kind::Tenant, "t1", b"a"), put(Kind::Tenant, "t1", b"b")])
            .await
            .unwrap();
        assert_eq!(c.load().await.unwrap().records, vec![record(Kind::Tenant, "t1", b"b")]);
    }

    pub async fn delete_removes_and_a_missing_record_is_fine(fx: &mut Fixture) {
        let c = fx.c();
        c.apply(&[
            create(Kind::Key, "key_1", b"1"),
            create(Kind::Key, "key_2", b"2"),
            create(Kind::Tenant, "key_1", b"same id, other kind"),
        ])
        .await
        .unwrap();
        assert_eq!(c.apply(&[delete(Kind::Key, "key_1")]).await.unwrap(), 2);
        assert_eq!(
            ids(&*c).await,
            vec![(Kind::Tenant, "key_1".into()), (Kind::Key, "key_2".into())]
        );
        // Nothing to delete: fine, and still a version (the call asked).
        assert_eq!(c.apply(&[delete(Kind::Key, "key_1")]).await.unwrap(), 3);
        assert_eq!(c.apply(&[delete(Kind::EventType, "never.was")]).await.unwrap(), 4);
        assert_eq!(
            ids(&*c).await,
            vec![(Kind::Tenant, "key_1".into()), (Kind::Key, "key_2".into())]
        );
        // Deleted records can be created again.
        c.apply(&[create(Kind::Key, "key_1", b"back")]).await.unwrap();
        assert_eq!(ids(&*c).await.len(), 3);
    }

    pub async fn writes_of_several_kinds_apply_together(fx: &mut Fixture) {
        let c = fx.c();
        c.apply(&[
            create(Kind::Tenant, "acme", b"tenant v1"),
            create(Kind::Subscription, "sub_old", b"old"),
        ])
        .await
        .unwrap();
        let v = c
            .apply(&[
                put(Kind::Tenant, "acme", b"tenant v2"),
                create(Kind::Key, "key_acme", b"hash"),
                delete(Kind::Subscription, "sub_old"),
                create(Kind::Subscription, "sub_new", b"new"),
                put(Kind::EventType, "invoice.sent", b"schema"),
            ])
            .await
            .unwrap();
        assert_eq!(v, 2);
        assert_eq!(
            c.load().await.unwrap(),
            Contents {
                version: 2,
                records: vec![
                    record(Kind::Tenant, "acme", b"tenant v2"),
                    record(Kind::Key, "key_acme", b"hash"),
                    record(Kind::Subscription, "sub_new", b"new"),
                    record(Kind::EventType, "invoice.sent", b"schema"),
                ],
            }
        );
    }

    pub async fn invalid_ids_are_refused_before_anything_is_written(fx: &mut Fixture) {
        let c = fx.c();
        let long = "x".repeat(MAX_ID + 1);
        let bad = ["", "a/b", "a b", "tab\there", "new\nline", long.as_str()];
        for id in bad {
            for write in [
                create(Kind::Tenant, id, b"x"),
                put(Kind::Subscription, id, b"x"),
                delete(Kind::Key, id),
            ] {
                let err = c
                    .apply(&[put(Kind::Tenant, "ok", b"valid"), write.clone()])
                    .await
                    .expect_err("an invalid id");
                assert!(matches!(err, Error::Invalid(_)), "{id:?}: {err:?}");
                let text = err.to_string();
                assert!(text.contains(&format!("`{id}`")), "the error names the id: {text}");
            }
        }
        assert_eq!(c.version().await.unwrap(), 0, "nothing was applied");
        assert_eq!(c.load().await.unwrap(), Contents::default());
        // The longest id allowed is fine.
        let longest = "y".repeat(MAX_ID);
        assert_eq!(c.apply(&[create(Kind::Tenant, &longest, b"x")]).await.unwrap(), 1);
        assert_eq!(ids(&*c).await, vec![(Kind::Tenant, longest)]);
    }

    pub async fn record_uses_keeps_the_later_time_and_bumps_nothing(fx: &mut Fixture) {
        let c = fx.c();
        c.record_uses(&[]).await.unwrap();
        assert!(c.uses().await.unwrap().is_empty());
        c.record_uses(&[("key_1".into(), 1_000), ("key_2".into(), 500)])
            .await
            .unwrap();
        c.record_uses(&[
            ("key_1".into(), 900),
            ("key_2".into(), 600),
            ("key_3".into(), 1),
            ("key_4".into(), 1_700_000_000_123),
            ("key_4".into(), 1_700_000_000_000),
        ])
        .await
        .unwrap();
        assert_eq!(
            sorted_uses(&*c).await,
            vec![
                ("key_1".into(), 1_000),
                ("key_2".into(), 600),
                ("key_3".into(), 1),
                ("key_4".into(), 1_700_000_000_123),
            ]
        );
        assert_eq!(c.version().await.unwrap(), 0, "uses are not versioned");
        assert_eq!(c.load().await.unwrap(), Contents::default(), "uses are not records");
        // Many at once (more than one script run on Redis).
        let many: Vec<(String, Millis)> = (0..1_500).map(|n| (format!("key_m{n}"), n)).collect();
        c.record_uses(&many).await.unwrap();
        let all = sorted_uses(&*c).await;
        assert_eq!(all.len(), 4 + many.len());
        assert!(all.contains(&("key_m1499".into(), 1_499)));
    }

    pub async fn data_survives_reopening(fx: &mut Fixture) {
        let c = fx.c();
        c.apply(&[
            create(Kind::Tenant, "acme", RAW),
            create(Kind::Key, "key_1", b"hash"),
            create(Kind::Key, "key_gone", b"hash"),
        ])
        .await
        .unwrap();
        c.apply(&[delete(Kind::Key, "key_gone")]).await.unwrap();
        c.record_uses(&[("key_1".into(), 42)]).await.unwrap();
        let before = c.load().await.unwrap();
        drop(c);
        fx.reopen().await;
        let c = fx.c();
        assert_eq!(c.load().await.unwrap(), before);
        assert_eq!(c.version().await.unwrap(), 2);
        assert_eq!(c.uses().await.unwrap(), vec![("key_1".into(), 42)]);
        let err = c
            .apply(&[create(Kind::Tenant, "acme", b"x")])
            .await
            .expect_err("exists");
        assert!(matches!(err, Error::Exists { .. }), "{err:?}");
        assert_eq!(c.apply(&[put(Kind::Tenant, "acme", b"x")]).await.unwrap(), 3);
    }

    pub async fn concurrent_creates_of_one_id_have_one_winner(fx: &mut Fixture) {
        let c = fx.c();
        let tasks: Vec<_> = (0..10)
            .map(|n| {
                let c = c.clone();
                tokio::spawn(async move {
                    let body = format!("task {n}");
                    (n, c.apply(&[create(Kind::Tenant, "race", body.as_bytes())]).await)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            let (n, result) = task.await.expect("task");
            match result {
                Ok(v) => winners.push((n, v)),
                Err(Error::Exists { kind: Kind::Tenant, id }) if id == "race" => {}
                Err(other) => panic!("task {n}: {other:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "{winners:?}");
        let (n, v) = winners[0];
        assert_eq!(v, 1);
        assert_eq!(c.version().await.unwrap(), 1);
        assert_eq!(
            c.load().await.unwrap().records,
            vec![record(Kind::Tenant, "race", format!("task {n}").as_bytes())]
        );
    }

    pub async fn sessions_expire_and_take_once(fx: &mut Fixture) {
        let c = fx.c();
        let now = hookd::model::now_ms();
        assert_eq!(c.session("s_none", now).await.unwrap(), None);
        c.put_session("s_a", RAW, now + 60_000).await.unwrap();
        assert_eq!(c.session("s_a", now).await.unwrap().as_deref(), Some(RAW));
        assert_eq!(
            c.session("s_a", now).await.unwrap().as_deref(),
            Some(RAW),
            "reading keeps it"
        );
        assert_eq!(
            c.session("s_a", now + 60_000).await.unwrap(),
            None,
            "gone at its expiry"
        );
        // A put replaces, and sessions are neither records nor versioned.
        c.put_session("s_a", b"second", now + 60_000).await.unwrap();
        assert_eq!(c.session("s_a", now).await.unwrap().as_deref(), Some(&b"second"[..]));
        assert_eq!(c.version().await.unwrap(), 0);
        assert_eq!(c.load().await.unwrap(), Contents::default());
        c.delete_session("s_a").await.unwrap();
        c.delete_session("s_a").await.unwrap();
        assert_eq!(c.session("s_a", now).await.unwrap(), None);
        // Taking spends: once, by one of many takers.
        c.put_session("l_once", b"link", now + 60_000).await.unwrap();
        let takers: Vec<_> = (0..8)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(async move { c.take_session("l_once", now).await.unwrap() })
            })
            .collect();
        let mut got = Vec::new();
        for t in takers {
            got.extend(t.await.unwrap());
        }
        assert_eq!(got, vec![b"link".to_vec()], "one taker gets it");
        assert_eq!(c.session("l_once", now).await.unwrap(), None);
        // An expired link cannot be taken; one that really expired in the
        // store (Redis drops it) reads as gone too.
        c.put_session("l_old", b"link", now + 60_000).await.unwrap();
        assert_eq!(c.take_session("l_old", now + 60_001).await.unwrap(), None);
        c.put_session("l_short", b"link", hookd::model::now_ms() + 150)
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(c.session("l_short", hookd::model::now_ms()).await.unwrap(), None);
        // Many expired ones are swept as new ones come (embedded), or
        // expire in Redis; either way the live one stays.
        for n in 0..100 {
            c.put_session(&format!("s_dead{n}"), b"x", now - 1).await.unwrap();
        }
        c.put_session("s_live", b"live", now + 60_000).await.unwrap();
        assert_eq!(c.session("s_live", now).await.unwrap().as_deref(), Some(&b"live"[..]));
    }

    /// Live sessions are listed soonest to end first, links and ended
    /// sessions left out, and leave the listing when deleted or taken.
    pub async fn live_sessions_are_listed_soonest_first(fx: &mut Fixture) {
        let c = fx.c();
        let now = hookd::model::now_ms();
        c.put_session("s_b", b"bee", now + 120_000).await.unwrap();
        c.put_session("s_a", b"ay", now + 60_000).await.unwrap();
        c.put_session("l_link", b"link", now + 60_000).await.unwrap();
        c.put_session("s_old", b"old", now - 1).await.unwrap();
        let ids = |listed: Vec<(String, Vec<u8>)>| listed.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
        let listed = c.live_sessions("s_", now, 10).await.unwrap();
        assert_eq!(
            listed,
            vec![("s_a".to_owned(), b"ay".to_vec()), ("s_b".to_owned(), b"bee".to_vec())]
        );
        assert_eq!(ids(c.live_sessions("s_", now, 1).await.unwrap()), ["s_a"]);
        c.delete_session("s_b").await.unwrap();
        assert_eq!(ids(c.live_sessions("s_", now, 10).await.unwrap()), ["s_a"]);
        assert!(c.take_session("s_a", now).await.unwrap().is_some());
        assert!(c.live_sessions("s_", now, 10).await.unwrap().is_empty());
    }

    /// Shared backends only: two clients (two processes) of one store.
    pub async fn two_clients_see_each_others_writes(fx: &mut Fixture) {
        let first = fx.c();
        let second = fx.connect().await;
        assert_eq!(first.apply(&[create(Kind::Tenant, "acme", b"a")]).await.unwrap(), 1);
        assert_eq!(second.version().await.unwrap(), 1);
        assert_eq!(second.load().await.unwrap(), first.load().await.unwrap());
        assert_eq!(
            second
                .apply(&[create(Kind::Key, "key_1", b"k"), put(Kind::Tenant, "acme", b"b")])
                .await
                .unwrap(),
            2
        );
        assert_eq!(first.version().await.unwrap(), 2);
        assert_eq!(
            first.load().await.unwrap().records,
            vec![record(Kind::Tenant, "acme", b"b"), record(Kind::Key, "key_1", b"k")]
        );
        let err = first
            .apply(&[create(Kind::Key, "key_1", b"again")])
            .await
            .expect_err("the other client created it");
        assert!(matches!(err, Error::Exists { .. }), "{err:?}");
        second.record_uses(&[("key_1".into(), 7)]).await.unwrap();
        first.record_uses(&[("key_1".into(), 5)]).await.unwrap();
        assert_eq!(first.uses().await.unwrap(), vec![("key_1".into(), 7)]);
        // Concurrent creates from both clients: one winner.
        let (one, two) = (
            [create(Kind::EventType, "x.y", b"1")],
            [create(Kind::EventType, "x.y", b"2")],
        );
        let (a, b) = tokio::join!(first.apply(&one), second.apply(&two));
        assert!(a.is_ok() != b.is_ok(), "{a:?} {b:?}");
        assert_eq!(second.version().await.unwrap(), 3);
        // A session kept by one process is known to the other.
        let now = hookd::model::now_ms();
        first.put_session("s_shared", b"s", now + 60_000).await.unwrap();
        assert_eq!(
            second.session("s_shared", now).await.unwrap().as_deref(),
            Some(&b"s"[..])
        );
        assert_eq!(
            second.take_session("s_shared", now).await.unwrap().as_deref(),
            Some(&b"s"[..])
        );
        assert_eq!(first.session("s_shared", now).await.unwrap(), None);
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

/// Instantiates every case for one backend, and the extra ones named.
macro_rules! conformance {
    ($backend:ident, $open:path $(, $extra:ident)*) => {
        mod $backend {
            use super::*;
            case!($open, a_new_store_is_version_0_and_empty);
            case!($open, created_records_load_byte_for_byte_sorted_by_kind_then_id);
            case!($open, versions_bump_once_per_apply_and_not_for_an_empty_one);
            case!($open, a_create_of_an_existing_record_refuses_the_whole_call);
            case!($open, creates_see_the_earlier_writes_of_their_call);
            case!($open, an_expectation_not_met_refuses_the_whole_call);
            case!($open, put_adds_and_replaces);
            case!($open, delete_removes_and_a_missing_record_is_fine);
            case!($open, writes_of_several_kinds_apply_together);
            case!($open, invalid_ids_are_refused_before_anything_is_written);
            case!($open, record_uses_keeps_the_later_time_and_bumps_nothing);
            case!($open, data_survives_reopening);
            case!($open, concurrent_creates_of_one_id_have_one_winner);
            case!($open, sessions_expire_and_take_once);
            case!($open, live_sessions_are_listed_soonest_first);
            $(case!($open, $extra);)*
        }
    };
}

conformance!(redis, Home::redis, two_clients_see_each_others_writes);
conformance!(redis_cluster, Home::redis_cluster, two_clients_see_each_others_writes);
// One process owns the embedded file: a second handle is refused (see
// `embedded_only`), so the two-clients case does not apply.
conformance!(embedded, Home::embedded);

/// What only the Redis backend does.
mod redis_only {
    use super::*;
    use hookd::catalog::store::redis::{records_key, session_key, sessions_key, uses_key, version_key};

    #[tokio::test]
    async fn every_key_is_under_the_prefix_and_one_hash_tag() {
        for (config, home) in [Home::redis("keys"), Home::redis_cluster("keys_cluster")] {
            let fx = Fixture::open((config, home)).await;
            let c = fx.c();
            c.apply(&[create(Kind::Tenant, "t1", b"x")]).await.unwrap();
            c.record_uses(&[("key_1".into(), 1)]).await.unwrap();
            c.put_session("s_1", b"s", hookd::model::now_ms() + 60_000)
                .await
                .unwrap();
            let Home::Redis(server) = &fx.home else { unreachable!() };
            let prefix = &fx.config.key_prefix;
            let mut keys: Vec<String> = server.command(&["KEYS", "*"]).lines().map(str::to_owned).collect();
            keys.sort();
            let session = session_key(prefix, "s_1");
            let ttl: i64 = server.command(&["PTTL", &session]).trim().parse().unwrap();
            assert!(ttl > 50_000 && ttl <= 60_000, "the session expires in Redis too: {ttl}");
            let mut expected = vec![
                records_key(prefix),
                uses_key(prefix),
                version_key(prefix),
                session,
                sessions_key(prefix),
            ];
            expected.sort();
            assert_eq!(keys, expected);
            assert!(keys.iter().all(|k| k.starts_with(&format!("{prefix}:{{catalog}}:"))));
            if fx.config.cluster {
                let slots: Vec<String> = keys
                    .iter()
                    .map(|k| server.command(&["CLUSTER", "KEYSLOT", k]))
                    .collect();
                assert!(slots.windows(2).all(|w| w[0] == w[1]), "{slots:?}");
            }
            assert_eq!(server.command(&["HGET", &records_key(prefix), "tenant/t1"]), "x");
        }
    }

    #[tokio::test]
    async fn a_field_of_an_unknown_kind_is_reported() {
        let fx = Fixture::open(Home::redis("corrupt_kind")).await;
        let c = fx.c();
        c.apply(&[create(Kind::Tenant, "t1", b"x")]).await.unwrap();
        let Home::Redis(server) = &fx.home else { unreachable!() };
        let key = records_key(&fx.config.key_prefix);
        assert_eq!(server.command(&["HSET", &key, "widget/w1", "{}"]), "1");
        let err = c.load().await.expect_err("an unknown kind");
        let text = err.to_string();
        assert!(text.contains("widget/w1") && text.contains("`widget`"), "{text}");
        assert_eq!(server.command(&["HSET", &key, "no_slash", "{}"]), "1");
        assert_eq!(server.command(&["HDEL", &key, "widget/w1"]), "1");
        let text = c.load().await.expect_err("no kind").to_string();
        assert!(text.contains("no_slash"), "{text}");
    }

    #[tokio::test]
    async fn a_corrupt_version_is_reported_and_writes_nothing() {
        let fx = Fixture::open(Home::redis("corrupt_version")).await;
        let c = fx.c();
        let Home::Redis(server) = &fx.home else { unreachable!() };
        let key = version_key(&fx.config.key_prefix);
        assert_eq!(server.command(&["SET", &key, "seven"]), "OK");
        let text = c.version().await.expect_err("not a number").to_string();
        assert!(text.contains("seven") && text.contains(&key), "{text}");
        c.apply(&[put(Kind::Tenant, "t1", b"x")]).await.expect_err("INCR fails");
        assert_eq!(server.command(&["HLEN", &records_key(&fx.config.key_prefix)]), "0");
    }

    #[tokio::test]
    async fn a_corrupt_use_time_is_reported() {
        let fx = Fixture::open(Home::redis("corrupt_use")).await;
        let c = fx.c();
        let Home::Redis(server) = &fx.home else { unreachable!() };
        let key = uses_key(&fx.config.key_prefix);
        assert_eq!(server.command(&["HSET", &key, "key_1", "soon"]), "1");
        let text = c.uses().await.expect_err("not a time").to_string();
        assert!(text.contains("key_1") && text.contains("soon"), "{text}");
        // A later use replaces it.
        c.record_uses(&[("key_1".into(), 10)]).await.unwrap();
        assert_eq!(c.uses().await.unwrap(), vec![("key_1".into(), 10)]);
    }

    #[tokio::test]
    async fn connecting_needs_a_redis_url() {
        let dir = tempfile::tempdir().unwrap();
        let config = queue_config(&unique_prefix("no_url"), None, dir.path());
        let err = RedisCatalog::connect(&config).await.err().expect("no URL");
        assert!(err.to_string().contains("queue.redis_url"), "{err}");
    }
}

/// What only the embedded backend does.
mod embedded_only {
    use super::*;
    use hookd::catalog::store::embedded::FILE_NAME;

    #[tokio::test]
    async fn a_second_handle_is_refused_while_one_is_open() {
        let fx = Fixture::open(Home::embedded("in_use")).await;
        let path = fx.config.data_dir.join(FILE_NAME);
        assert!(path.exists(), "{} was not created", path.display());
        let err = EmbeddedCatalog::open(&fx.config).err().expect("already open");
        match &err {
            Error::InUse { path: p } => assert_eq!(p, &path),
            other => panic!("wanted InUse, got {other:?}"),
        }
        assert!(err.to_string().contains(FILE_NAME), "{err}");
    }

    /// Set in the child process of [`applied_writes_survive_a_crash`]: the
    /// store directory it writes to before aborting.
    const CRASH_DIR_VAR: &str = "HOOKD_TEST_CATALOG_CRASH_DIR";

    #[test]
    fn applied_writes_survive_a_crash() {
        if let Ok(dir) = std::env::var(CRASH_DIR_VAR) {
            // The child: apply, then die without closing anything.
            let config = queue_config("crash", None, std::path::Path::new(&dir));
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let c = EmbeddedCatalog::open(&config).unwrap();
                for n in 0..20 {
                    c.apply(&[create(Kind::Subscription, &format!("sub_{n}"), RAW)])
                        .await
                        .unwrap();
                }
                println!("applied");
                std::process::abort();
            });
        }
        let dir = tempfile::tempdir().unwrap();
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "embedded_only::applied_writes_survive_a_crash",
                "--nocapture",
            ])
            .env(CRASH_DIR_VAR, dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(!output.status.success(), "the child should have aborted");
        assert!(stdout.contains("applied"), "the child did not get to apply: {stdout}");

        let config = queue_config("crash", None, dir.path());
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let c = EmbeddedCatalog::open(&config).expect("reopen after a crash");
            let contents = c.load().await.unwrap();
            assert_eq!(contents.version, 20, "every confirmed apply survives");
            assert_eq!(contents.records.len(), 20);
            assert!(contents.records.iter().all(|r| r.body == RAW));
        });
    }
}
