//! Catalogue scale: what 10,000 stored subscriptions across 1,000 tenants
//! cost fan-out, and what one catalogue change costs every process.
//!
//! The catalogues are made through public APIs only: tenant and
//! subscription records written in one call to a real embedded store (in a
//! temp dir), then [`Catalog::open`]; the TOML part with
//! [`Config::from_toml`].
//!
//! - `fanout/*`: one event through `Routes::matching` and the building of
//!   its deliveries (`ingest::to_subscriptions`, what `Ingestor::ingest_batch`
//!   does per event), exactly one delivery in every case:
//!   - `toml_1`: today's single TOML subscription (`*`), an event of no
//!     tenant (the `load` example's baseline);
//!   - `tenant_1`: one tenant `t0042` with one stored subscription (`*`);
//!   - `tenants_1000x10`: 1,000 tenants with 10 stored subscriptions each
//!     (patterns mixed: one `*`, exact ones, `prefix.*` ones; only the `*`
//!     wants `coupon.redeemed`) and 3 operator subscriptions that do not
//!     want the event; the event is of `t0042`.
//! - `catalogue_change/*`, for 1 and 10,000 stored subscriptions: what every
//!   process does when the catalogue changes (`Catalog::refresh` and the
//!   reloader): `store_load` reads every record from the embedded store,
//!   `snapshot_build` builds the snapshot (`Catalog::preview`, the same
//!   `Snapshot::build`), `endpoints_build` rebuilds the dispatcher's
//!   endpoints from it (`Endpoints::build` with the previous ones, as
//!   `reload.rs` does).
//!
//! ```text
//! cargo bench --bench catalog
//! ```

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hookd::catalog::store::embedded::EmbeddedCatalog;
use hookd::catalog::store::{CatalogStore, Kind, Record, Write};
use hookd::catalog::{new_secret, Catalog, StoredSecret, StoredSubscription, SubscriptionSpec, Tenant};
use hookd::config::{Config, SubscriptionName, TenantId};
use hookd::dispatch::{Endpoints, LoadedPlugins};
use hookd::ingest::{parse_event, to_subscriptions, Event};
use hookd::queue::now_ms;
use hookd::telemetry::Metrics;

/// The patterns of each tenant's subscriptions, by index: only the first
/// wants `coupon.redeemed`.
const PATTERNS: [&[&str]; 10] = [
    &["*"],
    &["order.created"],
    &["order.*"],
    &["invoice.paid"],
    &["invoice.*"],
    &["coupon.expired"],
    &["coupon.code.*"],
    &["link.clicked"],
    &["link.*"],
    &["stamp.rewarded", "stamp.expired"],
];

/// Operator subscriptions that do not want an event of `t0042`.
const OPERATOR: &str = r#"
[[subscriptions]]
name = "ops-audit"
url = "http://127.0.0.1:9/ops-audit"
events = ["audit.*"]
secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]

[[subscriptions]]
name = "ops-billing"
url = "http://127.0.0.1:9/ops-billing"
events = ["invoice.paid"]
secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]

[[subscriptions]]
name = "ops-t0001"
url = "http://127.0.0.1:9/ops-t0001"
events = ["*"]
secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
tenants = ["t0001"]
"#;

/// Today's single catch-all TOML subscription.
const TOML_ONE: &str = r#"
[[subscriptions]]
name = "load"
url = "http://127.0.0.1:9/hook"
events = ["*"]
secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
"#;

fn tenant_id(n: usize) -> TenantId {
    TenantId::parse(&format!("t{n:04}")).expect("tenant id")
}

fn record<T: serde::Serialize>(kind: Kind, id: &str, value: &T) -> Write {
    Write::Create(Record {
        kind,
        id: id.to_owned(),
        body: serde_json::to_vec(value).expect("serializes"),
    })
}

/// The records of `tenants` tenants (`t0000`…) with `per` subscriptions
/// each (patterns from [`PATTERNS`]).
fn records(tenants: usize, per: usize, first: usize) -> Vec<Write> {
    let now = now_ms();
    let mut writes = Vec::with_capacity(tenants * (per + 1));
    for t in first..first + tenants {
        let id = tenant_id(t);
        let tenant = Tenant {
            id: id.clone(),
            name: format!("Tenant {t}"),
            plan: None,
            metadata: Default::default(),
            created_at: now,
            updated_at: now,
            generation: format!("g{t}"),
        };
        writes.push(record(Kind::Tenant, id.as_str(), &tenant));
        for j in 0..per {
            let sub = StoredSubscription {
                id: SubscriptionName::parse(&format!("sub_{id}_{j}")).expect("subscription id"),
                tenant: id.clone(),
                spec: SubscriptionSpec {
                    name: format!("s{j}"),
                    url: format!("http://127.0.0.1:9/hook/{id}/{j}"),
                    events: PATTERNS[j % PATTERNS.len()].iter().map(|p| p.to_string()).collect(),
                    headers: Default::default(),
                    description: None,
                    rate_limit: None,
                    max_in_flight: None,
                    max_retries: None,
                    timeout: None,
                    plugin: None,
                },
                secrets: vec![StoredSecret {
                    value: new_secret(),
                    expires_at: None,
                }],
                created_at: now,
                updated_at: now,
                deleted_at: None,
                tenant_generation: format!("g{t}"),
                operator_disabled_at: None,
            };
            writes.push(record(Kind::Subscription, sub.id.as_str(), &sub));
        }
    }
    writes
}

/// A catalogue of the TOML `subscriptions` and the stored `writes`, in an
/// embedded store under `dir`.
struct Fixture {
    catalog: Arc<Catalog>,
    store: Arc<EmbeddedCatalog>,
    file: Config,
}

fn fixture(rt: &tokio::runtime::Runtime, dir: &std::path::Path, subscriptions: &str, writes: Vec<Write>) -> Fixture {
    let text = format!("[delivery]\nallow_http = true\nallow_private_networks = true\n{subscriptions}");
    let mut file = Config::from_toml(&text).expect("config");
    file.queue.data_dir = dir.to_path_buf();
    let store = Arc::new(EmbeddedCatalog::open(&file.queue).expect("open the embedded catalogue"));
    rt.block_on(async {
        if !writes.is_empty() {
            store.apply(&writes).await.expect("write the catalogue");
        }
        let catalog = Catalog::open(file.clone(), store.clone())
            .await
            .expect("open the catalogue");
        Fixture { catalog, store, file }
    })
}

fn event(tenant: Option<&str>) -> Event {
    let tenant = tenant.map(|t| format!(r#","tenant":"{t}""#)).unwrap_or_default();
    parse_event(
        format!(
            r#"{{"type":"coupon.redeemed","id":"evt_bench","data":{{"coupon":"SPRING10","amount":12.5,"customer":"cus_1"}}{tenant}}}"#
        )
        .as_bytes(),
        hookd::ingest::DEFAULT_MAX_DEPTH,
    )
    .expect("event")
}

fn catalog_benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("temp dir")).collect();
    let toml_one = fixture(&rt, dirs[0].path(), TOML_ONE, Vec::new());
    let tenant_one = fixture(&rt, dirs[1].path(), "", records(1, 1, 42));
    let many = fixture(&rt, dirs[2].path(), OPERATOR, records(1000, 10, 0));
    assert_eq!(many.catalog.snapshot().config.subscriptions.len(), 10_003);

    let mut group = c.benchmark_group("fanout");
    group.throughput(Throughput::Elements(1));
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    let cases = [
        ("toml_1", &toml_one, None),
        ("tenant_1", &tenant_one, Some("t0042")),
        ("tenants_1000x10", &many, Some("t0042")),
    ];
    for (name, fixture, tenant) in cases {
        let event = event(tenant);
        let snapshot = fixture.catalog.snapshot();
        let fan_out = || {
            let matching = snapshot.routes.matching(&event.event_type, event.tenant.as_ref());
            to_subscriptions(&event, "", matching, 8, 1)
        };
        assert_eq!(
            fan_out().deliveries.len(),
            1,
            "{name}: exactly one subscription wants the event"
        );
        group.bench_function(name, |b| b.iter(|| black_box(fan_out())));
    }
    group.finish();

    let mut group = c.benchmark_group("catalogue_change");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    for (name, fixture) in [("1", &tenant_one), ("10000", &many)] {
        group.bench_function(format!("store_load/{name}"), |b| {
            b.iter(|| black_box(rt.block_on(fixture.store.load()).expect("load")))
        });
        group.bench_function(format!("snapshot_build/{name}"), |b| {
            b.iter(|| black_box(rt.block_on(fixture.catalog.preview(&fixture.file))))
        });
        let metrics = Metrics::new();
        let snapshot = fixture.catalog.snapshot();
        let previous =
            Endpoints::build(&snapshot.config, &LoadedPlugins::default(), &metrics, None).expect("endpoints");
        group.bench_function(format!("endpoints_build/{name}"), |b| {
            b.iter(|| {
                black_box(
                    Endpoints::build(&snapshot.config, &LoadedPlugins::default(), &metrics, Some(&previous))
                        .expect("endpoints"),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, catalog_benches);
criterion_main!(benches);
