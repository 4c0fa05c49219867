//! End to end, tenants: subscriptions made through the API by tenant keys,
//! isolation between tenants on every route, plans, keys and their
//! revocation, deletes cancelling pending deliveries, and several hookd
//! processes sharing one Redis (or Cluster) seeing each other's changes
//! within a second. Real receivers verify every signature with the secret
//! the API handed out.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use hookd::api::client::ApiClient;
use hookd::api::stats::Stats;
use hookd::config::Config;
use serde_json::{json, Value};
use support::daemon::{Hookd, WAIT};
use support::receiver::{Answer, Receiver, SECRET};
use support::RedisServer;

const ADMIN: &str = "tenants-admin-key";

/// The tests' config: `queue` (embedded in `dir` if empty), an admin key,
/// loopback receivers reachable by the operator's subscriptions and, on
/// every plan (`plans.default`, which `extra` may set more of), by tenants'.
fn toml(dir: &Path, queue: &str, extra: &str) -> String {
    const NETWORK: &str = "allow_http = true\nallow_private_networks = true\n";
    let (default_plan, extra) = match extra.split_once("[plans.default]\n") {
        Some((before, after)) => (String::new(), format!("{before}[plans.default]\n{NETWORK}{after}")),
        None => (format!("[plans.default]\n{NETWORK}"), extra.to_owned()),
    };
    format!(
        "[server]\napi_keys = [\"{ADMIN}\"]\n[queue]\n{queue}\npoll_interval = \"20ms\"\n{default_plan}[delivery]\nallow_http = true\nallow_private_networks = true\nbackoff_initial = \"100ms\"\n[history]\nmax_age = \"1h\"\n\n[plans.free]\nmax_subscriptions = 2\nmax_rate_limit = 5\n{extra}",
        queue = if queue.is_empty() { format!("data_dir = {:?}", dir.display().to_string()) } else { queue.to_string() },
    )
}

fn status(result: &Result<Value, hookd::api::client::Error>) -> u16 {
    ApiClient::status_of(result).expect("hookd answered")
}

/// Makes tenant `id` and a tenant key for it; returns a client with that key.
async fn tenant(admin: &ApiClient, id: &str, plan: Option<&str>) -> ApiClient {
    let mut body = json!({"id": id, "name": format!("{id} Inc.")});
    if let Some(plan) = plan {
        body["plan"] = plan.into();
    }
    let made = admin.post("/v1/tenants", body.to_string()).await.unwrap();
    assert_eq!(made["id"], id);
    let key = admin
        .post(&format!("/v1/tenants/{id}/keys"), json!({"label": "tests"}).to_string())
        .await
        .unwrap();
    assert_eq!(key["role"], "tenant");
    let key = key["key"].as_str().expect("the key is shown once").to_owned();
    admin.with_key(key)
}

/// Makes a subscription with `client` and trusts its secret at `path` on `rx`.
async fn subscribe(client: &ApiClient, rx: &Receiver, path: &str, events: Value) -> Value {
    let made = client
        .post(
            "/v1/subscriptions",
            json!({"name": path, "url": rx.url(path), "events": events, "headers": {"x-team": path}}).to_string(),
        )
        .await
        .unwrap();
    let secret = made["secret"].as_str().expect("a new secret is shown on creation");
    assert!(secret.starts_with("whsec_"), "{made}");
    rx.trust(path, &[secret]);
    made
}

fn embedded(dir: &Path, extra: &str) -> Config {
    Config::from_toml(&toml(dir, "", extra)).unwrap()
}

/// Where a test's hookd keeps its queue, log and catalogue.
#[derive(Clone, Copy, Debug)]
enum Backend {
    Embedded,
    Redis,
    Cluster,
}

/// A config on `backend` (with the Redis server it needs, kept alive by
/// the caller) and `extra` TOML.
fn config_on(backend: Backend, dir: &Path, prefix: &str, extra: &str) -> (Config, Option<RedisServer>) {
    let (redis, queue) = match backend {
        Backend::Embedded => (None, String::new()),
        Backend::Redis | Backend::Cluster => {
            let cluster = matches!(backend, Backend::Cluster);
            let redis = if cluster {
                RedisServer::start_cluster()
            } else {
                RedisServer::start()
            };
            let queue = format!(
                "redis_url = \"{}\"\ncluster = {cluster}\nkey_prefix = \"{prefix}\"",
                redis.url()
            );
            (Some(redis), queue)
        }
    };
    (Config::from_toml(&toml(dir, &queue, extra)).unwrap(), redis)
}

async fn tenants_reach_only_their_own_subscriptions(backend: Backend) {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    // An operator subscription for every event, and one for acme's only.
    let extra = format!(
        "[[subscriptions]]\nname = \"ops\"\nurl = \"{}\"\nevents = [\"*\"]\nsecrets = [\"{SECRET}\"]\n\n[[subscriptions]]\nname = \"acme-audit\"\nurl = \"{}\"\nevents = [\"*\"]\nsecrets = [\"{SECRET}\"]\ntenants = [\"acme\"]\n",
        rx.url("ops"),
        rx.url("acme-audit"),
    );
    let (config, _redis) = config_on(backend, dir.path(), "tenants_fanout", &extra);
    let hookd = Hookd::start(config).await;
    let admin = hookd.api.clone();
    let acme = tenant(&admin, "acme", None).await;
    let globex = tenant(&admin, "globex", None).await;
    let a = subscribe(&acme, &rx, "acme-coupons", json!(["coupon.*"])).await;
    let g = subscribe(&globex, &rx, "globex-coupons", json!(["coupon.*"])).await;
    assert!(a["id"].as_str().unwrap().starts_with("sub_"), "{a}");
    assert_eq!(a["tenant"], "acme");
    assert_eq!(a["name"], "acme-coupons");

    // The same event id from two tenants is two events; one of no tenant
    // reaches the operator's subscriptions only.
    let event = |tenant: Option<&str>| {
        let mut e = json!({"type": "coupon.redeemed", "id": "evt_same", "data": {"coupon": "SPRING10"}});
        if let Some(t) = tenant {
            e["tenant"] = t.into();
        }
        e
    };
    for t in [Some("acme"), Some("globex"), None] {
        let accepted = hookd.send(event(t)).await;
        assert_eq!(accepted["duplicate"], false, "{t:?}: {accepted}");
    }
    let again = hookd.send(event(Some("acme"))).await;
    assert_eq!(again["duplicate"], true, "dedup is per tenant: {again}");
    let arrivals = rx.wait_for(WAIT, "every delivery", |a| a.len() >= 6).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let arrivals_now = rx.arrivals();
    assert_eq!(arrivals_now.len(), arrivals.len(), "nothing more arrives");
    let count = |path: &str| arrivals_now.iter().filter(|a| a.path == path).count();
    assert_eq!(count("acme-coupons"), 1, "acme's event only");
    assert_eq!(count("globex-coupons"), 1, "globex's event only");
    assert_eq!(count("ops"), 3, "the operator's catch-all gets all three");
    assert_eq!(count("acme-audit"), 1, "limited to acme");
    assert!(arrivals_now.iter().all(|a| a.verified), "every signature verifies");
    let acme_arrival = arrivals_now.iter().find(|a| a.path == "acme-coupons").unwrap();
    assert_eq!(acme_arrival.id, "evt_same");
    assert_eq!(acme_arrival.headers["x-team"], "acme-coupons");
    assert_eq!(acme_arrival.json()["data"]["coupon"], "SPRING10");

    // Each tenant's log holds its own deliveries; an event is looked up
    // per tenant.
    let wait_log = |client: ApiClient, path: &'static str| async move {
        let deadline = Instant::now() + WAIT;
        loop {
            let page = client.get(path).await.unwrap();
            if page["deliveries"].as_array().is_some_and(|d| !d.is_empty()) {
                return page;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {path}: {page}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let own = wait_log(acme.clone(), "/v1/deliveries").await;
    let own = own["deliveries"].as_array().unwrap();
    assert_eq!(
        own.len(),
        1,
        "acme's log: its own delivery, not the operator's: {own:?}"
    );
    assert_eq!(own[0]["subscription"], a["id"]);
    let theirs = wait_log(globex.clone(), "/v1/deliveries").await;
    assert_eq!(theirs["deliveries"].as_array().unwrap().len(), 1, "{theirs}");
    assert_eq!(theirs["deliveries"][0]["subscription"], g["id"]);
    let admin_view = admin.get("/v1/deliveries?tenant=acme").await.unwrap();
    assert_eq!(admin_view["deliveries"].as_array().unwrap().len(), 1, "{admin_view}");
    let plain = admin.get("/v1/events/evt_same").await.unwrap();
    assert_eq!(
        plain["deliveries"].as_array().unwrap().len(),
        1,
        "the event of no tenant went to `ops` only: {plain}"
    );
    let of_acme = admin.get("/v1/events/evt_same?tenant=acme").await.unwrap();
    assert_eq!(
        of_acme["deliveries"].as_array().unwrap().len(),
        3,
        "acme's event: ops, acme-audit, acme-coupons: {of_acme}"
    );
    let seen_by_acme = acme.get("/v1/events/evt_same").await.unwrap();
    assert_eq!(
        seen_by_acme["deliveries"].as_array().unwrap().len(),
        1,
        "{seen_by_acme}"
    );
    assert_eq!(status(&globex.get("/v1/events/evt_same?tenant=acme").await), 404);
    // A tenant replays its own event to its own subscription, with the
    // same webhook-id.
    let replayed = acme
        .post("/v1/events/evt_same/replay", json!({"key": "r1"}).to_string())
        .await
        .unwrap();
    assert_eq!(replayed["deliveries"].as_array().unwrap().len(), 1, "{replayed}");
    rx.wait_for(WAIT, "the replay", |x| {
        x.iter().filter(|a| a.path == "acme-coupons").count() == 2
    })
    .await;

    // Unknown tenants and reserved types are refused, naming the field.
    let unknown = admin
        .post(
            "/v1/events",
            json!({"type": "a.b", "data": {}, "tenant": "initech"}).to_string(),
        )
        .await;
    assert_eq!(status(&unknown), 400);
    assert!(unknown.unwrap_err().to_string().contains("tenant"));
    hookd.stop().await;
}

async fn a_tenant_sees_and_touches_nothing_of_another(backend: Backend) {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[[subscriptions]]\nname = \"ops\"\nurl = \"{}\"\nevents = [\"*\"]\nsecrets = [\"{SECRET}\"]\n",
        rx.url("ops")
    );
    let (config, _redis) = config_on(backend, dir.path(), "tenants_isolation", &extra);
    let hookd = Hookd::start(config).await;
    let admin = hookd.api.clone();
    let acme = tenant(&admin, "acme", None).await;
    let globex = tenant(&admin, "globex", None).await;
    let a = subscribe(&acme, &rx, "acme-links", json!(["link.clicked"])).await;
    let id = a["id"].as_str().unwrap().to_owned();
    hookd
        .send(json!({"type": "link.clicked", "id": "evt_a1", "tenant": "acme", "data": {"link": "l1"}}))
        .await;
    rx.wait_for(WAIT, "acme's delivery", |a| a.iter().any(|x| x.path == "acme-links"))
        .await;
    // The log is written just after the attempt: wait for it.
    hookd
        .wait_for(
            &format!("/v1/deliveries?subscription={id}"),
            "acme's delivery logged",
            |v| v["deliveries"].as_array().is_some_and(|d| !d.is_empty()),
        )
        .await;
    let delivered = acme.get(&format!("/v1/deliveries?subscription={id}")).await.unwrap();
    let delivery = delivered["deliveries"][0]["id"].as_str().unwrap().to_owned();

    // Acme sees its own.
    assert_eq!(
        acme.get(&format!("/v1/subscriptions/{id}")).await.unwrap()["id"],
        id.as_str()
    );
    let listed = acme.get("/v1/subscriptions").await.unwrap();
    let ids: Vec<&str> = listed["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![id.as_str()], "a tenant lists its own, not the operator's");
    acme.get(&format!("/v1/deliveries/{delivery}/attempts")).await.unwrap();
    let event = acme.get("/v1/events/evt_a1").await.unwrap();
    assert_eq!(
        event["deliveries"].as_array().unwrap().len(),
        1,
        "its own delivery, not the operator's: {event}"
    );

    // Globex gets a 404 for every one of acme's objects, and the
    // operator's: existence does not leak.
    let sub = format!("/v1/subscriptions/{id}");
    let checks: Vec<(&str, Result<Value, _>)> = vec![
        ("show", globex.get(&sub).await),
        ("secret", globex.get(&format!("{sub}/secret")).await),
        (
            "patch",
            globex.patch(&sub, json!({"url": rx.url("evil")}).to_string()).await,
        ),
        ("disable", globex.post(&format!("{sub}/disable"), "").await),
        ("enable", globex.post(&format!("{sub}/enable"), "").await),
        ("replay", globex.post(&format!("{sub}/replay"), "").await),
        (
            "deliveries",
            globex.get(&format!("/v1/deliveries?subscription={id}")).await,
        ),
        (
            "attempts",
            globex.get(&format!("/v1/deliveries/{delivery}/attempts")).await,
        ),
        (
            "retry",
            globex.post(&format!("/v1/deliveries/{delivery}/retry"), "").await,
        ),
        ("event", globex.get("/v1/events/evt_a1").await),
        ("operator's", globex.get("/v1/subscriptions/ops").await),
        ("delete", globex.delete(&sub).await),
    ];
    for (what, result) in &checks {
        assert_eq!(status(result), 404, "{what}: {result:?}");
    }
    let listed = globex.get("/v1/subscriptions").await.unwrap();
    assert_eq!(listed["subscriptions"], json!([]), "globex lists nothing of acme's");
    let replay = globex
        .post("/v1/events/evt_a1/replay", json!({"subscriptions": [id]}).to_string())
        .await;
    assert_eq!(status(&replay), 400, "{replay:?}");
    // Globex cannot make a subscription for acme either.
    let forged = globex
        .post(
            "/v1/subscriptions",
            json!({"tenant": "acme", "name": "x", "url": rx.url("x"), "events": ["*"]}).to_string(),
        )
        .await;
    assert_eq!(status(&forged), 404, "{forged:?}");

    // Admin routes are a 403 for tenant keys; TOML subscriptions are
    // read-only through the API.
    assert_eq!(status(&acme.get("/v1/tenants").await), 403);
    assert_eq!(status(&acme.post("/v1/tenants/acme/keys", "{}").await), 403);
    assert_eq!(
        status(
            &acme
                .post("/v1/events", json!({"type": "a.b", "data": {}}).to_string())
                .await
        ),
        403
    );
    assert_eq!(status(&admin.delete("/v1/subscriptions/ops").await), 409);
    assert_eq!(status(&admin.patch("/v1/subscriptions/ops", "{}").await), 409);

    // A producer key bound to acme sends acme's events only, and reads
    // nothing.
    let producer = admin
        .post("/v1/tenants/acme/keys", json!({"role": "producer"}).to_string())
        .await
        .unwrap();
    let producer = admin.with_key(producer["key"].as_str().unwrap());
    let sent = producer
        .post(
            "/v1/events",
            json!({"type": "link.clicked", "data": {"link": "l2"}}).to_string(),
        )
        .await
        .unwrap();
    assert_eq!(sent["deliveries"], 2, "acme's and the operator's: {sent}");
    let wrong = producer
        .post(
            "/v1/events",
            json!({"type": "link.clicked", "tenant": "globex", "data": {}}).to_string(),
        )
        .await;
    assert_eq!(status(&wrong), 403, "{wrong:?}");
    assert_eq!(status(&producer.get("/v1/subscriptions").await), 403);

    // A wrong key is a 401; keys are listed without the key itself.
    assert_eq!(status(&admin.with_key("hk_nope").get("/v1/subscriptions").await), 401);
    let keys = admin.get("/v1/tenants/acme/keys").await.unwrap();
    let text = keys.to_string();
    assert_eq!(keys["keys"].as_array().unwrap().len(), 2, "{keys}");
    assert!(!text.contains("hk_"), "keys are never shown again: {text}");
    let roles: Vec<&str> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["role"].as_str().unwrap())
        .collect();
    assert!(roles.contains(&"tenant") && roles.contains(&"producer"), "{keys}");
    assert!(
        keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["last_used_at"].is_string()),
        "both keys were used, and say when: {keys}"
    );
    hookd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_validated_like_the_config_and_limited_by_plan() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = embedded(dir.path(), "");
    // The plan, not `[delivery]` (which allows it), says what a tenant may reach.
    config.plans.get_mut("free").unwrap().allow_http = Some(false);
    let hookd = Hookd::start(config).await;
    let admin = hookd.api.clone();
    let acme = tenant(&admin, "acme", Some("free")).await;
    let made = |body: Value| {
        let acme = acme.clone();
        async move { acme.post("/v1/subscriptions", body.to_string()).await }
    };
    let https = "https://hooks.example.com/in";
    let cases = [
        (
            json!({"name": "a", "url": rx.url("a"), "events": ["*"]}),
            422,
            "url: http:// endpoints are refused; use https, or set plans.free.allow_http = true",
        ),
        (json!({"name": "a", "url": https, "events": []}), 422, "events"),
        (
            json!({"name": "a", "url": https, "events": ["coupon..x"]}),
            422,
            "events",
        ),
        (
            json!({"name": "a", "url": https, "events": ["*"], "headers": {"webhook-id": "x"}}),
            422,
            "headers.webhook-id",
        ),
        (
            json!({"name": "a", "url": https, "events": ["*"], "colour": 1}),
            422,
            "unknown field `colour`",
        ),
        (
            json!({"name": "a", "url": https, "events": ["*"], "rate_limit": {"per_second": 50}}),
            422,
            "rate_limit.per_second: 50 is above the bound of 5 (plan `free`: max_rate_limit)",
        ),
        (json!({"url": https, "events": ["*"]}), 422, "missing field `name`"),
    ];
    for (body, want_status, want) in cases {
        let result = made(body.clone()).await;
        assert_eq!(status(&result), want_status, "{body}: {result:?}");
        let message = result.unwrap_err().to_string();
        assert!(message.contains(want), "{body}: {message}");
    }
    made(json!({"name": "one", "url": https, "events": ["*"]}))
        .await
        .unwrap();
    let dup = made(json!({"name": "one", "url": https, "events": ["*"]})).await;
    assert_eq!(status(&dup), 422, "names are unique per tenant: {dup:?}");
    made(json!({"name": "two", "url": https, "events": ["*"], "rate_limit": {"per_second": 5}}))
        .await
        .unwrap();
    let third = made(json!({"name": "three", "url": https, "events": ["*"]})).await;
    assert_eq!(status(&third), 403, "{third:?}");
    let message = third.unwrap_err().to_string();
    assert!(message.contains("plan `free` allows 2 subscriptions"), "{message}");

    // Changing the plan applies at once.
    admin
        .post("/v1/tenants", json!({"id": "x", "name": "unused"}).to_string())
        .await
        .unwrap();
    let bad_plan = admin
        .patch("/v1/tenants/acme", json!({"plan": "gold"}).to_string())
        .await;
    assert_eq!(status(&bad_plan), 422, "{bad_plan:?}");
    admin
        .patch("/v1/tenants/acme", json!({"plan": null}).to_string())
        .await
        .unwrap();
    made(json!({"name": "three", "url": https, "events": ["*"]}))
        .await
        .unwrap();
    hookd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_applies_to_deliveries_not_yet_attempted() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let hookd = Hookd::start(embedded(dir.path(), "")).await;
    let acme = tenant(&hookd.api, "acme", None).await;
    let made = subscribe(&acme, &rx, "before", json!(["stamp.rewarded"])).await;
    let id = made["id"].as_str().unwrap();
    let secret = acme.get(&format!("/v1/subscriptions/{id}/secret")).await.unwrap();
    assert_eq!(secret["secret"], made["secret"], "the owner sees the secret again");
    let patched = acme
        .patch(
            &format!("/v1/subscriptions/{id}"),
            json!({"url": rx.url("after"), "events": ["stamp.*"], "description": "moved"}).to_string(),
        )
        .await
        .unwrap();
    assert_eq!(patched["url"], rx.url("after"));
    assert_eq!(patched["description"], "moved");
    rx.trust("after", &[made["secret"].as_str().unwrap()]);
    hookd
        .send(json!({"type": "stamp.expired", "tenant": "acme", "data": {"card": "c1"}}))
        .await;
    let arrivals = rx
        .wait_for(WAIT, "the delivery at the new URL", |a| {
            a.iter().any(|x| x.path == "after")
        })
        .await;
    assert!(arrivals.iter().all(|a| a.path == "after" && a.verified), "{arrivals:?}");

    // Answers show the URL's userinfo and parameter values redacted; a
    // PATCH handing it back as shown (the console's edit form does) keeps
    // the real one.
    let secret_url = rx.url("after") + "?token=tok-9";
    let shown = acme
        .patch(
            &format!("/v1/subscriptions/{id}"),
            json!({"url": secret_url}).to_string(),
        )
        .await
        .unwrap();
    let shown_url = shown["url"].as_str().unwrap().to_owned();
    assert!(!shown_url.contains("tok-9"), "{shown_url}");
    assert_eq!(shown_url, rx.url("after") + "?token=[redacted]");
    let again = acme
        .patch(
            &format!("/v1/subscriptions/{id}"),
            json!({"url": shown_url, "description": "again"}).to_string(),
        )
        .await
        .unwrap();
    assert_eq!(again["url"], shown_url);
    assert_eq!(again["description"], "again");
    hookd
        .send(json!({"type": "stamp.expired", "id": "evt_query", "tenant": "acme", "data": {}}))
        .await;
    let arrivals = rx
        .wait_for(WAIT, "the delivery after the round trip", |a| {
            a.iter().any(|x| x.id == "evt_query")
        })
        .await;
    let last = arrivals.iter().find(|x| x.id == "evt_query").unwrap();
    assert_eq!(last.query.as_deref(), Some("token=tok-9"), "the real URL is kept");
    hookd.stop().await;
}

/// Waits until the delivery log shows `count` deliveries of
/// `subscription`, and `want` of them in `state`.
async fn wait_count(client: &ApiClient, subscription: &str, count: usize, state: &str, want: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let page = client
            .get(&format!("/v1/deliveries?subscription={subscription}"))
            .await
            .unwrap();
        let items = page["deliveries"].as_array().unwrap();
        if items.len() == count && items.iter().filter(|d| d["state"] == state).count() == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {want} {state} of {count}: {page:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the delivery log shows `subscription`'s `count`
/// deliveries all in `state`, as seen by `client`.
async fn wait_states(client: &ApiClient, subscription: &str, state: &str, count: usize) {
    wait_count(client, subscription, count, state, count).await;
}

async fn deletes_cancel_pending_deliveries(mut config: Config) {
    // Every retry waits an hour: deliveries stay pending until cancelled.
    config.delivery.backoff_initial = Duration::from_secs(3600);
    config.delivery.backoff_max = Duration::from_secs(3600);
    let rx = Receiver::start_with(|_, _, _| Answer::Status(500, vec![])).await;
    let hookd = Hookd::start(config).await;
    let admin = hookd.api.clone();
    let acme = tenant(&admin, "acme", None).await;
    let one = subscribe(&acme, &rx, "one", json!(["coupon.*"])).await;
    let two = subscribe(&acme, &rx, "two", json!(["coupon.*"])).await;
    let (one, two) = (one["id"].as_str().unwrap(), two["id"].as_str().unwrap());
    let send =
        |n: u32| hookd.send(json!({"type": "coupon.redeemed", "id": format!("evt_{n}"), "tenant": "acme", "data": {}}));
    for n in 0..3 {
        send(n).await;
    }
    rx.wait_for(WAIT, "a first attempt of each", |a| a.len() >= 6).await;
    wait_count(&acme, one, 3, "retrying", 3).await;
    wait_count(&acme, two, 3, "retrying", 3).await;
    // `two` disabled: its next delivery waits parked.
    acme.post(&format!("/v1/subscriptions/{two}/disable"), "")
        .await
        .unwrap();
    send(3).await;
    wait_count(&acme, two, 4, "parked", 1).await;
    rx.wait_for(WAIT, "evt_3's attempt at `one`", |a| a.len() >= 7).await;

    acme.delete(&format!("/v1/subscriptions/{one}")).await.unwrap();
    assert_eq!(status(&acme.get(&format!("/v1/subscriptions/{one}")).await), 404);
    wait_states(&acme, one, "cancelled", 4).await;

    // Deleting the tenant deletes its subscriptions, cancelling theirs
    // (the parked one included), and revokes its keys.
    admin.delete("/v1/tenants/acme").await.unwrap();
    assert_eq!(
        status(&acme.get("/v1/subscriptions").await),
        401,
        "its keys are revoked"
    );
    wait_states(&admin, two, "cancelled", 4).await;
    let before = rx.arrivals().len();
    assert_eq!(before, 7, "one attempt of each but the parked one");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.arrivals().len(), before, "nothing is sent after the deletes");
    hookd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_cancel_pending_deliveries_embedded() {
    let dir = tempfile::tempdir().unwrap();
    deletes_cancel_pending_deliveries(embedded(dir.path(), "")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_cancel_pending_deliveries_redis() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let queue = format!("redis_url = \"{}\"\nkey_prefix = \"tenants_delete\"", redis.url());
    deletes_cancel_pending_deliveries(Config::from_toml(&toml(dir.path(), &queue, "")).unwrap()).await;
}

/// Two hookd processes on one Redis (or Cluster): what one makes, the
/// other follows within a second.
async fn processes_share_the_catalogue(redis: &RedisServer, cluster: bool, prefix: &str) {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let queue = format!(
        "redis_url = \"{}\"\ncluster = {cluster}\nkey_prefix = \"{prefix}\"",
        redis.url()
    );
    let config = Config::from_toml(&toml(dir.path(), &queue, "")).unwrap();
    let first = Hookd::start(config.clone()).await;
    let second = Hookd::start(config).await;
    let acme = tenant(&first.api, "acme", None).await;
    let made = subscribe(&acme, &rx, "shared", json!(["message.created"])).await;
    let id = made["id"].as_str().unwrap().to_owned();

    // Made through the first, in force on the second within a second:
    // its tenant key works there, and its events are fanned out there.
    let on_second = second.api.with_key(acme_key(&acme));
    let started = Instant::now();
    loop {
        let sent = on_second
            .post(
                "/v1/events",
                json!({"type": "message.created", "tenant": "acme", "data": {"text": "hi"}}).to_string(),
            )
            .await;
        // A tenant key may not send: a 403 proves the key is known there.
        if status(&sent) == 403 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the key reached the second process within 1s: {sent:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    loop {
        let accepted = second
            .send(json!({"type": "message.created", "tenant": "acme", "data": {"text": "hi"}}))
            .await;
        if accepted["deliveries"] == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the subscription reached the second process within 1s: {accepted}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let arrivals = rx
        .wait_for(WAIT, "the delivery ingested on the second", |a| !a.is_empty())
        .await;
    assert!(arrivals.iter().all(|a| a.verified && a.path == "shared"));

    // Revoked through the second, refused by the first within a second.
    let keys = second.api.get("/v1/tenants/acme/keys").await.unwrap();
    let key_id = keys["keys"][0]["id"].as_str().unwrap().to_owned();
    second
        .api
        .delete(&format!("/v1/tenants/acme/keys/{key_id}"))
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let seen = acme.get(&format!("/v1/subscriptions/{id}")).await;
        if status(&seen) == 401 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "revoked on the first within 1s: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.stop().await;
    second.stop().await;
}

/// The bearer key a client of [`tenant`] sends.
fn acme_key(client: &ApiClient) -> String {
    client.key().expect("a tenant client has a key").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_sharing_redis_follow_each_others_changes() {
    let redis = RedisServer::start();
    processes_share_the_catalogue(&redis, false, "tenants_shared").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_sharing_a_cluster_follow_each_others_changes() {
    let redis = RedisServer::start_cluster();
    processes_share_the_catalogue(&redis, true, "tenants_cluster").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalogue_survives_a_restart() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = embedded(dir.path(), "");
    let hookd = Hookd::start(config.clone()).await;
    let acme = tenant(&hookd.api, "acme", None).await;
    let made = subscribe(&acme, &rx, "kept", json!(["*"])).await;
    hookd.stop().await;
    let hookd = Hookd::start(config).await;
    let acme = hookd.api.with_key(acme_key(&acme));
    let shown = acme
        .get(&format!("/v1/subscriptions/{}", made["id"].as_str().unwrap()))
        .await
        .unwrap();
    assert_eq!(shown["name"], "kept");
    hookd
        .send(json!({"type": "link.clicked", "tenant": "acme", "data": {}}))
        .await;
    rx.wait_for(WAIT, "delivery after restart", |a| a.iter().any(|x| x.verified))
        .await;
    hookd.stop().await;
}

/// POSTs `body` to hookd's `path` with bearer `key`; the status and the
/// `Retry-After` header.
async fn post_raw(base: &str, path: &str, key: &str, body: Value) -> (u16, Option<String>) {
    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = http::Request::post(format!("{base}{path}"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body.to_string())))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (response.status().as_u16(), retry_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_limits_its_tenants_ingest_rate() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "[plans.metered]\nevents_per_second = 0.5\nburst = 2\n";
    let hookd = Hookd::start(embedded(dir.path(), extra)).await;
    tenant(&hookd.api, "acme", Some("metered")).await;
    tenant(&hookd.api, "globex", Some("metered")).await;
    let event = |t: &str| json!({"type": "link.clicked", "tenant": t, "data": {}});
    for _ in 0..2 {
        let (status, _) = post_raw(&hookd.url, "/v1/events", ADMIN, event("acme")).await;
        assert_eq!(status, 202, "within the burst");
    }
    let (status, retry_after) = post_raw(&hookd.url, "/v1/events", ADMIN, event("acme")).await;
    assert_eq!(status, 429, "beyond the plan's rate");
    let wait: u64 = retry_after.expect("429 says when").parse().unwrap();
    assert!((1..=2).contains(&wait), "a token every 2 s: {wait}");
    let (status, _) = post_raw(&hookd.url, "/v1/events", ADMIN, event("globex")).await;
    assert_eq!(status, 202, "another tenant has its own bucket");
    let (status, _) = post_raw(
        &hookd.url,
        "/v1/events",
        ADMIN,
        json!({"type": "link.clicked", "data": {}}),
    )
    .await;
    assert_eq!(status, 202, "events of no tenant are not limited by a plan");
    // A new plan applies at once.
    hookd
        .api
        .patch("/v1/tenants/acme", json!({"plan": null}).to_string())
        .await
        .unwrap();
    let (status, _) = post_raw(&hookd.url, "/v1/events", ADMIN, event("acme")).await;
    assert_eq!(status, 202, "no plan, no limit");
    hookd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_catalogue_shapes_subscriptions_tests_and_validation() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = r#"
[ingest]
validate_schemas = true

[[event_types]]
name = "coupon.redeemed"
description = "A customer redeemed a coupon."
example = { coupon = "SPRING10", amount = 25 }
schema = { type = "object", required = ["coupon", "amount"], properties = { coupon = { type = "string" }, amount = { type = "integer", minimum = 0 } } }
"#;
    let hookd = Hookd::start(embedded(dir.path(), extra)).await;
    let admin = hookd.api.clone();
    let acme = tenant(&admin, "acme", None).await;

    // Any key reads the catalogue; admins add to it, checked.
    admin
        .put(
            "/v1/event-types/stamp.rewarded",
            json!({"description": "Ten stamps.", "example": {"card": "c1"}, "schema": {"type": "object"}}).to_string(),
        )
        .await
        .unwrap();
    let listed = acme.get("/v1/event-types").await.unwrap();
    let names: Vec<&str> = listed["event_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["coupon.redeemed", "stamp.rewarded"]);
    assert_eq!(listed["event_types"][0]["source"], "config");
    let bad = admin
        .put(
            "/v1/event-types/x.y",
            json!({"schema": {"type": "object"}, "example": [1]}).to_string(),
        )
        .await;
    assert_eq!(status(&bad), 422, "{bad:?}");
    let bad = admin
        .put(
            "/v1/event-types/x.y",
            json!({"schema": {"type": "nonsense"}}).to_string(),
        )
        .await;
    assert!(bad.unwrap_err().to_string().contains("schema"), "the field is named");
    assert_eq!(status(&acme.put("/v1/event-types/x.y", "{}").await), 403);
    assert_eq!(
        status(&admin.delete("/v1/event-types/coupon.redeemed").await),
        409,
        "the config's is read-only"
    );

    // Patterns must match the catalogue.
    let nothing = acme
        .post(
            "/v1/subscriptions",
            json!({"name": "n", "url": rx.url("n"), "events": ["link.*"]}).to_string(),
        )
        .await;
    assert_eq!(status(&nothing), 422);
    assert!(nothing
        .unwrap_err()
        .to_string()
        .contains("matches no type of the event catalogue"));
    let made = subscribe(&acme, &rx, "coupons", json!(["coupon.*"])).await;
    let id = made["id"].as_str().unwrap();

    // A test sends the type's example through the real pipeline.
    let test = acme
        .post(
            &format!("/v1/subscriptions/{id}/test"),
            json!({"type": "coupon.redeemed"}).to_string(),
        )
        .await
        .unwrap();
    let arrivals = rx.wait_for(WAIT, "the test event", |a| !a.is_empty()).await;
    assert_eq!(arrivals[0].id, test["event_id"].as_str().unwrap());
    assert!(arrivals[0].verified);
    assert_eq!(arrivals[0].json()["data"], json!({"coupon": "SPRING10", "amount": 25}));
    let not_wanted = acme
        .post(
            &format!("/v1/subscriptions/{id}/test"),
            json!({"type": "stamp.rewarded"}).to_string(),
        )
        .await;
    assert_eq!(status(&not_wanted), 422, "{not_wanted:?}");

    // Schemas are enforced at ingest, naming the failing path.
    let wrong = admin
        .post(
            "/v1/events",
            json!({"type": "coupon.redeemed", "tenant": "acme", "data": {"coupon": "X", "amount": "ten"}}).to_string(),
        )
        .await;
    assert_eq!(status(&wrong), 400);
    let message = wrong.unwrap_err().to_string();
    assert!(message.contains("/amount"), "{message}");
    let batch = admin
        .post(
            "/v1/events/batch",
            json!([{"type": "coupon.redeemed", "data": {"coupon": "A", "amount": 1}}, {"type": "coupon.redeemed", "data": {}}]).to_string(),
        )
        .await;
    assert_eq!(status(&batch), 400);
    assert!(
        batch.unwrap_err().to_string().contains("event 1"),
        "the batch names the event"
    );
    hookd
        .send(json!({"type": "coupon.redeemed", "tenant": "acme", "data": {"coupon": "Y", "amount": 3}}))
        .await;
    rx.wait_for(WAIT, "a valid event", |a| a.len() >= 2).await;
    hookd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_signs_beside_the_new_one_until_its_grace_ends() {
    use hookd::sign::Verifier;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let hookd = Hookd::start(embedded(dir.path(), "")).await;
    let acme = tenant(&hookd.api, "acme", None).await;
    let made = subscribe(&acme, &rx, "rotating", json!(["*"])).await;
    let id = made["id"].as_str().unwrap();
    let old = made["secret"].as_str().unwrap().to_owned();
    let rotated = acme
        .post(
            &format!("/v1/subscriptions/{id}/rotate-secret"),
            json!({"grace": "2s"}).to_string(),
        )
        .await
        .unwrap();
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    rx.trust("rotating", &[&new]);
    let shown = acme.get(&format!("/v1/subscriptions/{id}/secret")).await.unwrap();
    assert_eq!(shown["secret"], new.as_str());
    let verifies = |arrival: &support::receiver::Arrival, secret: &str| {
        Verifier::new(&[secret])
            .unwrap()
            .verify(&arrival.headers, &arrival.body)
            .is_ok()
    };
    let send = |n: u32| hookd.send(json!({"type": "a.b", "id": format!("evt_r{n}"), "tenant": "acme", "data": {}}));
    send(1).await;
    let during = rx.wait_for(WAIT, "a delivery in the grace", |a| !a.is_empty()).await;
    assert!(
        verifies(&during[0], &old) && verifies(&during[0], &new),
        "both verify during the grace"
    );
    let signatures = during[0].headers["webhook-signature"]
        .to_str()
        .unwrap()
        .split(' ')
        .count();
    assert_eq!(signatures, 2);
    tokio::time::sleep(Duration::from_millis(2600)).await;
    send(2).await;
    let after = rx.wait_for(WAIT, "a delivery after the grace", |a| a.len() >= 2).await;
    assert!(verifies(&after[1], &new), "the new one verifies");
    assert!(!verifies(&after[1], &old), "the old one no longer signs");
    assert_eq!(
        after[1].headers["webhook-signature"]
            .to_str()
            .unwrap()
            .split(' ')
            .count(),
        1
    );
    hookd.stop().await;
}

/// The `v1a` signature of an arrival checked by Python's `cryptography`
/// with the `whpk_` key `public`, over `body`.
fn python_verifies(public: &str, arrival: &support::receiver::Arrival, body: &[u8]) -> bool {
    let header = |name: &str| arrival.headers[name].to_str().unwrap().to_owned();
    support::interop::python_verifies_v1a(
        public,
        &header("webhook-id"),
        &header("webhook-timestamp"),
        &header("webhook-signature"),
        body,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ed25519_subscriptions_sign_v1a_that_receivers_verify_with_the_public_key() {
    use hookd::sign::{public_key_of, Verifier};
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let hookd = Hookd::start(embedded(dir.path(), "")).await;
    let acme = tenant(&hookd.api, "acme", None).await;

    // An HMAC subscription's answers keep their shape: no public keys.
    let hmac = subscribe(&acme, &rx, "hmac", json!(["*"])).await;
    assert!(hmac.get("public_keys").is_none(), "{hmac}");

    let made = acme
        .post(
            "/v1/subscriptions",
            json!({"name": "signed", "url": rx.url("signed"), "events": ["*"], "signature": "ed25519"}).to_string(),
        )
        .await
        .unwrap();
    let id = made["id"].as_str().unwrap().to_owned();
    let secret = made["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsk_"), "{made}");
    let public = public_key_of(&secret).unwrap();
    assert_eq!(made["public_keys"], json!([public]), "{made}");
    // The receiver holds the public key only.
    rx.trust("signed", &[&public]);
    let shown = acme.get(&format!("/v1/subscriptions/{id}")).await.unwrap();
    assert_eq!(shown["public_keys"], json!([public]));
    assert!(shown.get("secret").is_none(), "{shown}");
    let owner = acme.get(&format!("/v1/subscriptions/{id}/secret")).await.unwrap();
    assert_eq!(owner["secret"], secret.as_str());
    assert_eq!(owner["public_keys"], json!([public]));
    let listed = acme.get("/v1/subscriptions").await.unwrap();
    let item = listed["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id.as_str())
        .unwrap();
    assert_eq!(item["public_keys"], json!([public]));
    let refused = acme
        .post(
            "/v1/subscriptions",
            json!({"name": "x", "url": rx.url("x"), "events": ["*"], "signature": "rsa"}).to_string(),
        )
        .await;
    assert_eq!(status(&refused), 422);
    assert!(format!("{refused:?}").contains("signature"), "{refused:?}");

    let send =
        |n: u32| hookd.send(json!({"type": "a.b", "id": format!("evt_e{n}"), "tenant": "acme", "data": {"n": n}}));
    send(1).await;
    let first = rx
        .wait_for(WAIT, "a v1a delivery", |a| a.iter().any(|a| a.path == "signed"))
        .await;
    let first = first.iter().find(|a| a.path == "signed").unwrap().clone();
    assert!(first.verified, "the receiver verifies v1a with the public key");
    let signature = first.headers["webhook-signature"].to_str().unwrap().to_owned();
    assert!(signature.starts_with("v1a,") && !signature.contains(' '), "{signature}");
    assert!(
        python_verifies(&public, &first, &first.body),
        "Python's cryptography verifies hookd's v1a signature: {signature}"
    );
    let mut tampered = first.body.to_vec();
    tampered[0] = b' ';
    assert!(!python_verifies(&public, &first, &tampered), "nor a tampered body");
    let other = public_key_of(&hookd::sign::Scheme::Ed25519.new_secret()).unwrap();
    assert!(!python_verifies(&other, &first, &first.body), "nor another key");

    // A rotation to HMAC: both sign during the grace, v1a and v1.
    let rotated = acme
        .post(
            &format!("/v1/subscriptions/{id}/rotate-secret"),
            json!({"grace": "1h", "kind": "hmac"}).to_string(),
        )
        .await
        .unwrap();
    let hmac_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert!(hmac_secret.starts_with("whsec_"), "{rotated}");
    assert!(rotated.get("public_key").is_none(), "{rotated}");
    let shown = acme.get(&format!("/v1/subscriptions/{id}")).await.unwrap();
    assert_eq!(shown["public_keys"], json!([public]), "the old key still signs");
    send(2).await;
    let arrivals = rx
        .wait_for(WAIT, "a mixed delivery", |a| {
            a.iter().filter(|a| a.path == "signed").count() >= 2
        })
        .await;
    let mixed = arrivals.iter().filter(|a| a.path == "signed").nth(1).unwrap();
    assert!(mixed.verified);
    let signature = mixed.headers["webhook-signature"].to_str().unwrap();
    let schemes: Vec<&str> = signature.split(' ').map(|s| s.split(',').next().unwrap()).collect();
    assert_eq!(schemes, ["v1a", "v1"], "{signature}");
    for key in [&public, &hmac_secret, &secret] {
        assert!(
            Verifier::new(&[key.as_str()])
                .unwrap()
                .verify(&mixed.headers, &mixed.body)
                .is_ok(),
            "{key} verifies the mixed header"
        );
    }
    assert!(python_verifies(&public, mixed, &mixed.body));

    // And back to Ed25519 at once, with a rotation of no grace and no
    // kind: the newest secret's kind (HMAC) is kept unless asked.
    let same = acme
        .post(
            &format!("/v1/subscriptions/{id}/rotate-secret"),
            json!({"grace": "0s"}).to_string(),
        )
        .await
        .unwrap();
    assert!(same["secret"].as_str().unwrap().starts_with("whsec_"), "{same}");
    let back = acme
        .post(
            &format!("/v1/subscriptions/{id}/rotate-secret"),
            json!({"grace": "0s", "kind": "ed25519"}).to_string(),
        )
        .await
        .unwrap();
    let new_public = back["public_key"].as_str().unwrap().to_owned();
    assert_eq!(
        Some(new_public.clone()),
        public_key_of(back["secret"].as_str().unwrap())
    );
    let shown = acme.get(&format!("/v1/subscriptions/{id}")).await.unwrap();
    assert_eq!(shown["public_keys"], json!([new_public]));
    let bad = acme
        .post(
            &format!("/v1/subscriptions/{id}/rotate-secret"),
            json!({"kind": "dsa"}).to_string(),
        )
        .await;
    assert_eq!(status(&bad), 422);
    rx.trust("signed", &[&new_public]);
    send(3).await;
    let arrivals = rx
        .wait_for(WAIT, "a delivery under the new key", |a| {
            a.iter().filter(|a| a.path == "signed").count() >= 3
        })
        .await;
    let last = arrivals.iter().filter(|a| a.path == "signed").nth(2).unwrap();
    assert!(last.verified);
    assert!(python_verifies(&new_public, last, &last.body));
    assert!(
        !python_verifies(&public, last, &last.body),
        "the old key no longer signs"
    );
    hookd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_use_the_operators_registered_plugins_by_name() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[plugins]\ncache_dir = {:?}\ndeadline = \"2s\"\n[plugins.registry.jq]\npath = {:?}\ndescription = \"jq\"\n",
        support::plugins::shared_cache().display().to_string(),
        support::plugins::wasm("jq").display().to_string(),
    );
    let hookd = Hookd::start(embedded(dir.path(), &extra)).await;
    let acme = tenant(&hookd.api, "acme", None).await;
    let unknown = acme
        .post(
            "/v1/subscriptions",
            json!({"name": "p", "url": rx.url("p"), "events": ["*"], "plugin": {"name": "slack"}}).to_string(),
        )
        .await;
    assert_eq!(status(&unknown), 422);
    assert!(unknown
        .unwrap_err()
        .to_string()
        .contains("plugin.name: `slack` is not a registered plugin; use one of: jq"));
    let path = acme
        .post(
            "/v1/subscriptions",
            json!({"name": "p", "url": rx.url("p"), "events": ["*"], "plugin": {"path": "/etc/passwd"}}).to_string(),
        )
        .await;
    assert_eq!(status(&path), 422, "the API never takes a file path: {path:?}");
    let made = acme
        .post(
            "/v1/subscriptions",
            json!({
                "name": "shaped", "url": rx.url("shaped"), "events": ["coupon.*"],
                "plugin": {"name": "jq", "config": {"filter": "select(.data.amount >= 10) | {code: .data.coupon}"}}
            })
            .to_string(),
        )
        .await
        .unwrap();
    assert_eq!(
        made["plugin"],
        json!({"name": "jq", "config_keys": ["filter"]}),
        "no path, no config values"
    );
    rx.trust("shaped", &[made["secret"].as_str().unwrap()]);
    for (n, amount) in [(1, 5), (2, 25)] {
        hookd
            .send(json!({"type": "coupon.redeemed", "id": format!("evt_p{n}"), "tenant": "acme", "data": {"coupon": "C", "amount": amount}}))
            .await;
    }
    let arrivals = rx.wait_for(WAIT, "the reshaped delivery", |a| !a.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.arrivals().len(), 1, "the small one is filtered out");
    assert_eq!(arrivals[0].id, "evt_p2");
    assert_eq!(arrivals[0].json(), json!({"code": "C"}));
    assert!(arrivals[0].verified);
    hookd.stop().await;
}

/// The stats a client gets, typed as the server answers them.
async fn stats_of(client: &ApiClient, query: &str) -> Stats {
    let answer = client.get(&format!("/v1/stats{query}")).await.unwrap();
    serde_json::from_value(answer).expect("a Stats answer")
}

/// The overview of `GET /v1/stats`, from real deliveries to a receiver
/// answering 200 and one answering 500: an admin sees every attempt, the
/// queue's depth and the attempts per tenant, failing subscriptions worst
/// first; a tenant its own only; a producer nothing.
async fn stats_show_each_caller_its_own_activity(backend: Backend) {
    let ok = Receiver::start_with(|_, _, _| Answer::Status(200, vec![])).await;
    let down = Receiver::start_with(|_, _, _| Answer::Status(500, vec![])).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[[subscriptions]]\nname = \"ops\"\nurl = \"{}\"\nevents = [\"*\"]\nsecrets = [\"{SECRET}\"]\n",
        ok.url("ops")
    );
    let (mut config, _redis) = config_on(backend, dir.path(), "tenants_stats", &extra);
    // A failed attempt is the delivery's last: exact counts, and a dead one.
    config.delivery.max_retries = 0;
    let hookd = Hookd::start(config).await;
    let admin = hookd.api.clone();
    let acme = tenant(&admin, "acme", None).await;
    let globex = tenant(&admin, "globex", None).await;
    let up = subscribe(&acme, &ok, "acme-up", json!(["coupon.*"])).await;
    let failing = subscribe(&globex, &down, "globex-down", json!(["coupon.*"])).await;
    let (up, failing) = (up["id"].as_str().unwrap(), failing["id"].as_str().unwrap());
    for (id, tenant) in [("evt_s1", "acme"), ("evt_s2", "acme"), ("evt_s3", "globex")] {
        hookd
            .send(json!({"type": "coupon.redeemed", "id": id, "tenant": tenant, "data": {"coupon": "C"}}))
            .await;
    }
    // acme-up 2 and ops 3 succeed; globex-down fails once and is dead.
    let answer = hookd
        .wait_for("/v1/stats", "every attempt counted, settled and in the health", |s| {
            s["totals"]["succeeded"] == 5
                && s["totals"]["failed"] == 1
                && s["queue"] == json!({"due": 0, "scheduled": 0, "parked": 0, "dead": 1})
                && s["failing"].as_array().is_some_and(|f| f.len() == 1)
        })
        .await;
    assert_eq!(down.at("globex-down").len(), 1);
    assert!(ok.arrivals().iter().all(|a| a.verified));

    // The admin's view: every minute of the hour, the queue, the tenants.
    let all: Stats = serde_json::from_value(answer.clone()).expect("a Stats answer");
    assert_eq!(all.window, hookd::api::stats::Window::Hour);
    assert_eq!(all.minutes.len(), 61, "60 minutes and the one under way");
    assert_eq!(all.minutes[0].at, all.from);
    assert_eq!(all.to - all.from, chrono::Duration::minutes(61));
    assert!(all
        .minutes
        .windows(2)
        .all(|w| w[1].at - w[0].at == chrono::Duration::minutes(1)));
    assert!(
        all.to > chrono::Utc::now() - chrono::Duration::seconds(1),
        "the minute under way is in"
    );
    let sum: u64 = all.minutes.iter().map(|m| m.succeeded + m.failed).sum();
    assert_eq!(sum, 6, "the minutes add up to the totals");
    assert!(all
        .minutes
        .iter()
        .all(|m| (m.p50_ms.is_some()) == (m.succeeded + m.failed > 0)));
    assert!(all.totals.p50_ms.is_some() && all.totals.p99_ms >= all.totals.p50_ms);
    let tenants: Vec<(&str, u64)> = all
        .tenants
        .as_ref()
        .expect("tenants, for an admin")
        .iter()
        .map(|t| (t.tenant.as_str(), t.attempts))
        .collect();
    assert_eq!(
        tenants,
        vec![("acme", 2), ("globex", 1)],
        "by owner: the operator's are nobody's"
    );
    assert_eq!(all.failing.len(), 1, "{answer:#}");
    let worst = &all.failing[0];
    assert_eq!(
        (
            worst.id.as_str(),
            worst.name.as_str(),
            worst.tenant.as_ref().map(|t| t.as_str())
        ),
        (failing, "globex-down", Some("globex"))
    );
    assert_eq!((worst.status.as_str(), worst.consecutive_failures), ("active", 1));
    assert!(
        worst.failing_since.is_some() && worst.last_failure_at.is_some(),
        "{answer:#}"
    );
    let day = stats_of(&admin, "?window=day").await;
    assert_eq!(day.minutes.len(), 1441);
    assert_eq!((day.totals.succeeded, day.totals.failed), (5, 1));

    // A tenant's view: its own attempts and subscriptions, nothing else.
    let of_acme = acme.get("/v1/stats").await.unwrap();
    assert!(
        of_acme.get("queue").is_none() && of_acme.get("tenants").is_none(),
        "{of_acme:#}"
    );
    let of_acme: Stats = serde_json::from_value(of_acme).unwrap();
    assert_eq!((of_acme.totals.succeeded, of_acme.totals.failed), (2, 0));
    assert!(of_acme.failing.is_empty());
    let of_globex = stats_of(&globex, "?window=hour").await;
    assert_eq!((of_globex.totals.succeeded, of_globex.totals.failed), (0, 1));
    assert_eq!(of_globex.failing.len(), 1);
    let seen_by_admin = stats_of(&admin, "?tenant=globex").await;
    assert_eq!(
        (seen_by_admin.totals, seen_by_admin.failing, seen_by_admin.queue),
        (of_globex.totals, of_globex.failing, None),
        "an admin sees globex's view"
    );
    assert_eq!(status(&acme.get("/v1/stats?tenant=globex").await), 404);
    assert_eq!(status(&admin.get("/v1/stats?tenant=nobody").await), 404);
    assert_eq!(status(&admin.get("/v1/stats?window=week").await), 400);
    let producer = admin
        .post("/v1/tenants/acme/keys", json!({"role": "producer"}).to_string())
        .await
        .unwrap();
    let producer = admin.with_key(producer["key"].as_str().unwrap());
    assert_eq!(status(&producer.get("/v1/stats").await), 403);

    // Disabled comes first, then the most failures in a row.
    acme.post(&format!("/v1/subscriptions/{up}/disable"), "").await.unwrap();
    let all = stats_of(&admin, "").await;
    let order: Vec<(&str, &str)> = all.failing.iter().map(|f| (f.id.as_str(), f.status.as_str())).collect();
    assert_eq!(order, vec![(up, "disabled"), (failing, "active")]);
    let of_acme = stats_of(&acme, "").await;
    assert_eq!(of_acme.failing.len(), 1, "its own only");
    assert_eq!(of_acme.failing[0].id.as_str(), up);
    hookd.stop().await;
}

/// The cases that every backend must pass alike: fan-out and dedup by
/// tenant, isolation on every route, and the stats each caller sees.
macro_rules! on_every_backend {
    ($($module:ident => $backend:expr),*) => {$(
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tenants_reach_only_their_own_subscriptions() {
                super::tenants_reach_only_their_own_subscriptions($backend).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_tenant_sees_and_touches_nothing_of_another() {
                super::a_tenant_sees_and_touches_nothing_of_another($backend).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn stats_show_each_caller_its_own_activity() {
                super::stats_show_each_caller_its_own_activity($backend).await;
            }
        }
    )*};
}

on_every_backend!(embedded => Backend::Embedded, redis => Backend::Redis, cluster => Backend::Cluster);

// --- bounds: every field a tenant sets -----------------------------------

/// GETs `path` of hookd at `base` with the admin key: the status and the
/// body as text.
async fn get_text(base: &str, path: &str) -> (u16, String) {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = http::Request::get(format!("{base}{path}"))
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(Empty::new())
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The value of the metric line starting with `series` (`name{labels}`).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_a_tenant_sets_is_bounded_and_nothing_breaks() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = embedded(
        dir.path(),
        "[plans.small]\nmax_in_flight = 4\nmax_events = 3\nmax_burst = 10\n",
    );
    let hookd = Hookd::start(config.clone()).await;
    let admin = hookd.api.clone();
    let acme = tenant(&admin, "acme", None).await;
    let tiny = tenant(&admin, "tiny", Some("small")).await;
    let made = subscribe(&acme, &rx, "first", json!(["*"])).await;
    let id = made["id"].as_str().unwrap().to_owned();
    let https = "https://hooks.example.com/in";
    let many_headers: serde_json::Map<String, Value> = (0..2000)
        .map(|n| (format!("x-h{n}"), Value::String("v".repeat(1024))))
        .collect();
    let big_headers: serde_json::Map<String, Value> = (0..9)
        .map(|n| (format!("x-h{n}"), Value::String("v".repeat(1000))))
        .collect();
    let patterns: Vec<String> = (0..300).map(|n| format!("t{n}.x")).collect();
    // (field, value, what the 422 must say)
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "max_in_flight",
            json!(1u64 << 62),
            "max_in_flight: 4611686018427387904 is above the bound of 512 (delivery.max_in_flight)",
        ),
        (
            "max_retries",
            json!(1u64 << 31),
            "max_retries: 2147483648 is above the bound of 50 (delivery.max_retries_limit)",
        ),
        (
            "timeout",
            json!("1h"),
            "timeout: 1h is above the bound of 2m (delivery.timeout_max)",
        ),
        (
            "headers",
            Value::Object(many_headers),
            "is above the bound of 32 (hookd's bound on custom headers)",
        ),
        (
            "headers",
            Value::Object(big_headers),
            "is above the bound of 8192 (hookd's bound on custom header bytes)",
        ),
        (
            "events",
            json!(patterns),
            "events: 300 patterns: 300 is above the bound of 256",
        ),
        ("name", json!("n".repeat(201)), "name: must be 1 to 200 bytes"),
        (
            "description",
            json!("d".repeat(2001)),
            "description: must be at most 2000 bytes",
        ),
        (
            "url",
            json!(format!("{https}/{}", "p".repeat(2048))),
            "url: is 2077 bytes long, above the bound of 2048",
        ),
        (
            "rate_limit",
            json!({"per_second": 2_000_000.0}),
            "rate_limit.per_second: 2000000 is above the bound of 1000000",
        ),
        (
            "rate_limit",
            json!({"per_second": 10.0, "burst": 200_000}),
            "rate_limit.burst: 200000 is above the bound of 100000",
        ),
        (
            "rate_limit",
            json!({"per_second": 500_000.0}),
            "rate_limit.burst: absent, it would be per_second rounded up: 500000 is above the bound of 100000",
        ),
    ];
    for (field, value, want) in &cases {
        let mut body = json!({"name": "hostile", "url": https, "events": ["*"]});
        body[*field] = value.clone();
        let created = acme.post("/v1/subscriptions", body.to_string()).await;
        assert_eq!(status(&created), 422, "create with {field}: {created:?}");
        let message = created.unwrap_err().to_string();
        assert!(message.contains(want), "create with {field}: {message}");
        let patched = acme
            .patch(&format!("/v1/subscriptions/{id}"), json!({ *field: value }).to_string())
            .await;
        assert_eq!(status(&patched), 422, "PATCH of {field}: {patched:?}");
        let message = patched.unwrap_err().to_string();
        assert!(message.contains(want), "PATCH of {field}: {message}");
    }
    // A plan lowers the bounds, and says so.
    for (field, value, want) in [
        (
            "max_in_flight",
            json!(5),
            "max_in_flight: 5 is above the bound of 4 (plan `small`: max_in_flight)",
        ),
        (
            "events",
            json!(["a.a", "a.b", "a.c", "a.d"]),
            "events: 4 patterns: 4 is above the bound of 3 (plan `small`: max_events)",
        ),
        (
            "rate_limit",
            json!({"per_second": 1.0, "burst": 11}),
            "rate_limit.burst: 11 is above the bound of 10 (plan `small`: max_burst)",
        ),
    ] {
        let mut body = json!({"name": "hostile", "url": https, "events": ["*"]});
        body[field] = value;
        let created = tiny.post("/v1/subscriptions", body.to_string()).await;
        assert_eq!(status(&created), 422, "{field}: {created:?}");
        let message = created.unwrap_err().to_string();
        assert!(message.contains(want), "{field}: {message}");
    }
    tiny.post(
        "/v1/subscriptions",
        json!({"name": "ok", "url": https, "events": ["*"], "max_in_flight": 4}).to_string(),
    )
    .await
    .unwrap();
    // The disable reason is bounded too.
    let long = acme
        .post(
            &format!("/v1/subscriptions/{id}/disable"),
            json!({"reason": "r".repeat(501)}).to_string(),
        )
        .await;
    assert_eq!(status(&long), 422, "{long:?}");
    assert!(long
        .unwrap_err()
        .to_string()
        .contains("reason: is 501 bytes long, above the bound of 500"));
    // Values at the bounds are taken, and everything is still delivered:
    // by the first subscription and by one made after all of the above.
    acme.patch(
        &format!("/v1/subscriptions/{id}"),
        json!({"max_in_flight": 512, "max_retries": 50, "timeout": "29s"}).to_string(),
    )
    .await
    .unwrap();
    subscribe(&acme, &rx, "after", json!(["*"])).await;
    hookd
        .send(json!({"type": "link.clicked", "tenant": "acme", "data": {}}))
        .await;
    rx.wait_for(WAIT, "both subscriptions delivered", |a| {
        ["first", "after"]
            .iter()
            .all(|p| a.iter().any(|x| x.path == *p && x.verified))
    })
    .await;
    hookd.stop().await;
}

#[test]
fn the_operators_file_is_held_to_the_same_bounds() {
    let base = "[[subscriptions]]\nname = \"crm\"\nurl = \"https://crm.example.com/hooks\"\nevents = [\"*\"]\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n";
    for (extra, want) in [
        ("max_in_flight = 4611686018427387904", "invalid `subscriptions.crm.max_in_flight`: 4611686018427387904 is above the bound of 512 (delivery.max_in_flight)"),
        ("max_retries = 2147483648", "invalid `subscriptions.crm.max_retries`: 2147483648 is above the bound of 50 (delivery.max_retries_limit)"),
        ("timeout = \"10m\"\n[queue]\nlease = \"1h\"", "invalid `subscriptions.crm.timeout`: 10m is above the bound of 2m (delivery.timeout_max)"),
    ] {
        let e = Config::from_toml(&format!("{base}{extra}\n")).unwrap_err().to_string();
        assert!(e.contains(want), "{extra}: {e}");
    }
    for (toml, want) in [
        (
            "[delivery]\nmax_retries = 60\n",
            "invalid `delivery.max_retries`: 60 is above the bound of 50 (delivery.max_retries_limit)",
        ),
        (
            "[delivery]\nmax_in_flight_per_subscription = 4611686018427387904\n",
            "invalid `delivery.max_in_flight_per_subscription`: must be 1 to 100000",
        ),
        (
            "[delivery]\nmax_in_flight = 4611686018427387904\n",
            "invalid `delivery.max_in_flight`: must be 1 to 100000",
        ),
        (
            "[plans.x]\nmax_in_flight = 600\n",
            "invalid `plans.x.max_in_flight`: must be 1 to 512 (delivery.max_in_flight)",
        ),
        (
            "[plans.x]\nmax_timeout = \"1h\"\n",
            "invalid `plans.x.max_timeout`: must be between 1ms and 2m (delivery.timeout_max)",
        ),
        ("[plans.x]\nburst = 0\n", "invalid `plans.x.burst`: must be 1 to 100000"),
        (
            "[plans.x]\nmax_pending = 4611686018427387904\n",
            "invalid `plans.x.max_pending`: must be 1 to 1000000000",
        ),
        (
            "[plans.default]\nmax_pending = 0\n",
            "invalid `plans.default.max_pending`: must be 1 to 1000000000",
        ),
    ] {
        let e = Config::from_toml(toml).unwrap_err().to_string();
        assert!(e.contains(want), "{toml}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_without_a_plan_is_on_the_default_plan() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "[plans.default]\nmax_subscriptions = 2\nmax_rate_limit = 7\n[plans.roomy]\nmax_rate_limit = 9\n";
    let hookd = Hookd::start(embedded(dir.path(), extra)).await;
    let acme = tenant(&hookd.api, "acme", None).await;
    let roomy = tenant(&hookd.api, "roomy", Some("roomy")).await;
    let https = "https://hooks.example.com/in";
    for client in [&acme, &roomy] {
        let one = client
            .post(
                "/v1/subscriptions",
                json!({"name": "one", "url": https, "events": ["*"]}).to_string(),
            )
            .await
            .unwrap();
        client
            .post(
                "/v1/subscriptions",
                json!({"name": "two", "url": https, "events": ["*"]}).to_string(),
            )
            .await
            .unwrap();
        let third = client
            .post(
                "/v1/subscriptions",
                json!({"name": "three", "url": https, "events": ["*"]}).to_string(),
            )
            .await;
        assert_eq!(status(&third), 403, "{third:?}");
        // The plan's max_rate_limit is the rate of a subscription that sets none.
        let want = if std::ptr::eq(client, &acme) { 7.0 } else { 9.0 };
        assert_eq!(one["rate_limit"], json!({"per_second": want}), "{one}");
    }
    let message = acme
        .post(
            "/v1/subscriptions",
            json!({"name": "x", "url": https, "events": ["*"]}).to_string(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(message.contains("plan `default` allows 2 subscriptions"), "{message}");
    hookd.stop().await;
}

/// A stored subscription record that no check would let through today
/// (`max_in_flight` of 2^62), a record that is not JSON, and the tenant
/// they belong to, written straight into the catalogue store.
async fn poison(store: &dyn hookd::catalog::store::CatalogStore) {
    use hookd::catalog::store::{Kind, Record, Write};
    let tenant = json!({"id": "acme", "name": "Acme"});
    let sub = json!({
        "id": "sub_poisoned", "tenant": "acme",
        "spec": {"name": "poisoned", "url": "https://hooks.example.com/in", "events": ["*"], "max_in_flight": 1u64 << 62},
        "secrets": [{"value": SECRET}], "created_at": 1, "updated_at": 1,
    });
    let record = |kind, id: &str, body: Vec<u8>| Record {
        kind,
        id: id.into(),
        body,
    };
    store
        .apply(&[
            Write::Put(record(Kind::Tenant, "acme", tenant.to_string().into_bytes())),
            Write::Put(record(Kind::Subscription, "sub_poisoned", sub.to_string().into_bytes())),
            Write::Put(record(Kind::Subscription, "sub_garbled", b"{not json".to_vec())),
        ])
        .await
        .unwrap();
}

async fn a_poisoned_record_is_left_out_and_the_rest_served(backend: Backend) {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, _redis) = config_on(backend, dir.path(), "poisoned", "");
    match backend {
        Backend::Embedded => {
            let store = hookd::catalog::store::embedded::EmbeddedCatalog::open(&config.queue).unwrap();
            poison(&store).await;
        }
        _ => {
            let store = hookd::catalog::store::redis::RedisCatalog::connect(&config.queue)
                .await
                .unwrap();
            poison(&store).await;
        }
    }
    let hookd = Hookd::start(config.clone()).await;
    let admin = hookd.api.clone();
    let (code, metrics) = get_text(&hookd.url, "/metrics").await;
    assert_eq!(code, 200);
    assert_eq!(
        metric(&metrics, "hookd_catalog_rejected_records"),
        Some(2.0),
        "{metrics}"
    );
    // The poisoned one is not served; everything else is, old and new.
    let gone = admin.get("/v1/subscriptions/sub_poisoned").await;
    assert_eq!(status(&gone), 404, "{gone:?}");
    let globex = tenant(&admin, "globex", None).await;
    subscribe(&globex, &rx, "fresh", json!(["*"])).await;
    hookd
        .send(json!({"type": "link.clicked", "tenant": "globex", "data": {}}))
        .await;
    rx.wait_for(WAIT, "the new subscription delivered", |a| a.iter().any(|x| x.verified))
        .await;
    hookd.stop().await;
    // And so after a restart.
    let hookd = Hookd::start(config).await;
    let globex = hookd.api.with_key(acme_key(&globex));
    subscribe(&globex, &rx, "later", json!(["*"])).await;
    hookd
        .send(json!({"type": "link.clicked", "tenant": "globex", "data": {}}))
        .await;
    rx.wait_for(WAIT, "delivered after a restart", |a| {
        a.iter().any(|x| x.path == "later" && x.verified)
    })
    .await;
    hookd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_record_is_left_out_embedded() {
    a_poisoned_record_is_left_out_and_the_rest_served(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_record_is_left_out_redis() {
    a_poisoned_record_is_left_out_and_the_rest_served(Backend::Redis).await;
}

/// The issue's race: a plan of one subscription, 16 creations at once
/// through two processes sharing one Redis. One is made; every other is
/// refused with the plan's 403, none with a 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creations_on_two_processes_never_exceed_the_plan() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let queue = format!("redis_url = \"{}\"\nkey_prefix = \"race\"", redis.url());
    let config = Config::from_toml(&toml(dir.path(), &queue, "[plans.one]\nmax_subscriptions = 1\n")).unwrap();
    let first = Hookd::start(config.clone()).await;
    let second = Hookd::start(config).await;
    let on_first = tenant(&first.api, "acme", Some("one")).await;
    let on_second = second.api.with_key(acme_key(&on_first));
    // The second process knows the tenant's key before the race starts.
    second
        .wait_for("/v1/tenants/acme/keys", "the tenant's key on the second process", |k| {
            k.to_string().contains("key_")
        })
        .await;
    let https = "https://hooks.example.com/in";
    let tries = (0..16).map(|n| {
        let client = if n % 2 == 0 {
            on_first.clone()
        } else {
            on_second.clone()
        };
        async move {
            client
                .post(
                    "/v1/subscriptions",
                    json!({"name": format!("s{n}"), "url": https, "events": ["*"]}).to_string(),
                )
                .await
        }
    });
    let answers = futures_util::future::join_all(tries).await;
    let made = answers.iter().filter(|a| a.is_ok()).count();
    let refused: Vec<u16> = answers.iter().filter(|a| a.is_err()).map(status).collect();
    assert_eq!(made, 1, "{answers:?}");
    assert!(refused.iter().all(|&s| s == 403), "{answers:?}");
    for hookd in [&first, &second] {
        let listed = hookd.api.get("/v1/subscriptions?tenant=acme").await.unwrap();
        assert_eq!(listed["subscriptions"].as_array().unwrap().len(), 1, "{listed}");
    }
    first.stop().await;
    second.stop().await;
}

/// A rotation racing a PATCH keeps both: each write is a compare-and-set
/// on the record, tried again on what the other left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_changes_of_one_subscription_keep_each_other() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let queue = format!("redis_url = \"{}\"\nkey_prefix = \"cas\"", redis.url());
    let config = Config::from_toml(&toml(dir.path(), &queue, "")).unwrap();
    let first = Hookd::start(config.clone()).await;
    let second = Hookd::start(config).await;
    let acme = tenant(&first.api, "acme", None).await;
    let acme2 = second.api.with_key(acme_key(&acme));
    second
        .wait_for("/v1/tenants/acme/keys", "the tenant's key on the second process", |k| {
            k.to_string().contains("key_")
        })
        .await;
    let made = acme
        .post(
            "/v1/subscriptions",
            json!({"name": "s", "url": "https://hooks.example.com/in", "events": ["*"]}).to_string(),
        )
        .await
        .unwrap();
    let id = made["id"].as_str().unwrap().to_owned();
    second
        .wait_for(
            &format!("/v1/subscriptions/{id}"),
            "the subscription on the second process",
            |_| true,
        )
        .await;
    let (path, rotation) = (
        format!("/v1/subscriptions/{id}"),
        format!("/v1/subscriptions/{id}/rotate-secret"),
    );
    for round in 0..10 {
        let patch = acme2.patch(&path, json!({"description": format!("round {round}")}).to_string());
        let rotate = acme.post(&rotation, "{}");
        let (patched, rotated) = tokio::join!(patch, rotate);
        patched.unwrap();
        let rotated = rotated.unwrap();
        // Each process learns of the other's write within a poll; what
        // both then show must hold both changes.
        let want = format!("round {round}");
        let new_secret = rotated["secret"].as_str().unwrap().to_owned();
        for hookd in [&first, &second] {
            hookd
                .wait_for(&path, "the PATCH kept", |s| s["description"] == want.as_str())
                .await;
            hookd
                .wait_for(&format!("{path}/secret"), "the rotation kept", |s| {
                    s.to_string().contains(&new_secret)
                })
                .await;
        }
    }
    first.stop().await;
    second.stop().await;
}

/// Deleting a subscription erases its secrets, headers and URL tokens
/// from the store at once; its tombstone goes after
/// `catalog.tombstone_retention`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_subscription_keeps_no_secret_and_its_tombstone_is_purged() {
    use hookd::catalog::store::{CatalogStore, Kind, Record, Write};
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let queue = format!("redis_url = \"{}\"\nkey_prefix = \"tombs\"", redis.url());
    let config = Config::from_toml(&toml(dir.path(), &queue, "")).unwrap();
    let hookd = Hookd::start(config.clone()).await;
    let acme = tenant(&hookd.api, "acme", None).await;
    let token = "T0ken0fTheEndpointT0ken0fTheEndpoint";
    let made = acme
        .post(
            "/v1/subscriptions",
            json!({"name": "s", "url": format!("https://hooks.example.com/services/{token}"), "events": ["*"],
                   "headers": {"x-api-key": "hdr-credential"}})
            .to_string(),
        )
        .await
        .unwrap();
    let secret = made["secret"].as_str().unwrap().to_owned();
    let id = made["id"].as_str().unwrap().to_owned();
    acme.delete(&format!("/v1/subscriptions/{id}")).await.unwrap();
    let store = hookd::catalog::store::redis::RedisCatalog::connect(&config.queue)
        .await
        .unwrap();
    let contents = store.load().await.unwrap();
    let tomb = contents
        .records
        .iter()
        .find(|r| r.kind == Kind::Subscription && r.id == id)
        .expect("the tombstone is kept");
    let text = String::from_utf8_lossy(&tomb.body);
    assert!(text.contains("deleted_at"), "{text}");
    for kept in [secret.as_str(), "hdr-credential", token] {
        assert!(!text.contains(kept), "`{kept}` outlived the delete: {text}");
    }
    hookd.stop().await;
    // A tombstone older than the retention is purged; a recent one stays.
    let old = json!({"id": "sub_old", "tenant": "acme", "spec": {"name": "o", "url": "https://x.example.com", "events": ["*"]},
                     "secrets": [], "created_at": 1, "updated_at": 1, "deleted_at": 1});
    store
        .apply(&[Write::Put(Record {
            kind: Kind::Subscription,
            id: "sub_old".into(),
            body: old.to_string().into_bytes(),
        })])
        .await
        .unwrap();
    let catalog = hookd::catalog::Catalog::open(config, std::sync::Arc::new(store))
        .await
        .unwrap();
    assert_eq!(catalog.purge_tombstones().await.unwrap(), 1);
    let snapshot = catalog.snapshot();
    assert!(!snapshot.stored.keys().any(|k| k.as_str() == "sub_old"));
    assert!(
        snapshot.stored.keys().any(|k| k.as_str() == id),
        "the recent tombstone stays"
    );
    assert_eq!(catalog.purge_tombstones().await.unwrap(), 0);
}

/// One raw request to `base`: its status, its headers and its body.
async fn raw(method: &str, base: &str, path: &str, headers: &[(&str, &str)]) -> (u16, http::HeaderMap, String) {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = http::Request::builder().method(method).uri(format!("{base}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client.request(request.body(Empty::new()).unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// Opens the console link `url` of hookd at `base`: the session cookie.
async fn open_link(base: &str, url: &str) -> Option<String> {
    let path = url.strip_prefix(base).expect("a link to this hookd");
    let (status, headers, body) = raw("POST", base, path, &[("origin", base)]).await;
    if status == 410 {
        return None;
    }
    assert!(status < 400, "{status}: {body}");
    let cookie = headers.get("set-cookie").expect("a session cookie").to_str().unwrap();
    Some(cookie.split(';').next().unwrap().to_owned())
}

/// A tenant made again with the id of a deleted one starts empty: the old
/// one's deliveries, events, attempts, console sessions and links
/// are not its own, on every route, for its key and for an admin reading
/// its log; an event id the old one used is taken as new, not as its
/// duplicate, and a replay sends the new body. Before the generation
/// fence, the new key read the old tenant's deliveries and event bodies.
async fn a_tenant_made_again_starts_with_nothing_of_the_deleted_one(backend: Backend) {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, _redis) = config_on(backend, dir.path(), "generations", "");
    let hookd = Hookd::start(config).await;
    let admin = hookd.api.clone();
    let base = hookd.url.clone();
    let old = tenant(&admin, "acme", None).await;
    let made = subscribe(&old, &rx, "old", json!(["link.*"])).await;
    let old_sub = made["id"].as_str().unwrap().to_owned();
    let old_body =
        json!({"type": "link.clicked", "id": "evt_gen", "tenant": "acme", "data": {"secret": "the old tenant's"}});
    hookd.send(old_body).await;
    rx.wait_for(WAIT, "the old tenant's delivery", |a| a.iter().any(|x| x.path == "old"))
        .await;
    let logged = hookd
        .wait_for("/v1/deliveries?tenant=acme", "the old delivery logged", |v| {
            v["deliveries"][0]["state"] == "delivered"
        })
        .await;
    let old_delivery = logged["deliveries"][0]["id"].as_str().unwrap().to_owned();
    // A portal session, and a link not yet opened.
    let link = |_: ()| async {
        let made = admin.post("/v1/tenants/acme/portal", "").await.unwrap();
        made["url"].as_str().unwrap().to_owned()
    };
    let session = open_link(&base, &link(()).await).await.expect("the link opens");
    let unopened = link(()).await;
    let (code, _, _) = raw("GET", &base, "/console", &[("cookie", &session)]).await;
    assert_eq!(code, 200, "the portal session works");

    admin.delete("/v1/tenants/acme").await.unwrap();
    let new = tenant(&admin, "acme", None).await;

    let listed = new.get("/v1/deliveries").await.unwrap();
    assert_eq!(listed["deliveries"], json!([]), "{listed}");
    let listed = admin.get("/v1/deliveries?tenant=acme").await.unwrap();
    assert_eq!(
        listed["deliveries"],
        json!([]),
        "an admin reads the new tenant's log: {listed}"
    );
    assert_eq!(status(&new.get("/v1/events/evt_gen").await), 404);
    assert_eq!(
        status(&new.get(&format!("/v1/deliveries/{old_delivery}/attempts")).await),
        404
    );
    assert_eq!(
        status(&new.post(&format!("/v1/deliveries/{old_delivery}/retry"), "").await),
        404
    );
    assert_eq!(status(&new.get(&format!("/v1/subscriptions/{old_sub}")).await), 404);
    // Replaying the old event to a subscription of the new tenant: refused,
    // and nothing of the old body is sent.
    let fresh = subscribe(&new, &rx, "new", json!(["link.*"])).await;
    let fresh_id = fresh["id"].as_str().unwrap().to_owned();
    let replay = new
        .post(
            "/v1/events/evt_gen/replay",
            json!({"subscriptions": [fresh_id.clone()]}).to_string(),
        )
        .await;
    assert_eq!(status(&replay), 404, "{replay:?}");
    // The old session ended, and the old link opens nothing.
    let (status_code, headers, _) = raw("GET", &base, "/console", &[("cookie", &session)]).await;
    assert!((300..400).contains(&status_code), "{status_code}");
    assert!(headers["location"].to_str().unwrap().contains("sign-in"), "{headers:?}");
    assert_eq!(
        open_link(&base, &unopened).await,
        None,
        "the old tenant's link is spent"
    );

    // The same event id, from the new tenant: a new event, not a duplicate,
    // and the log (and a replay) holds the new body.
    let new_body = json!({"type": "link.clicked", "id": "evt_gen", "tenant": "acme", "data": {"n": 2}});
    let accepted = hookd.send(new_body).await;
    assert_eq!(accepted["duplicate"], false, "{accepted}");
    let arrived = rx
        .wait_for(WAIT, "the new tenant's delivery", |a| a.iter().any(|x| x.path == "new"))
        .await;
    let to_new: Vec<_> = arrived.iter().filter(|a| a.path == "new").collect();
    assert_eq!(to_new.len(), 1);
    assert!(to_new[0].verified);
    assert!(!String::from_utf8_lossy(&to_new[0].body).contains("old tenant"));
    let event = support::daemon::wait_for_answer(&new, "/v1/events/evt_gen", "the new event logged", |v| {
        v["event"].is_object()
    })
    .await;
    assert_eq!(event["deliveries"].as_array().unwrap().len(), 1, "{event}");
    assert!(!event.to_string().contains("old tenant"), "{event}");
    new.post("/v1/events/evt_gen/replay", "").await.unwrap();
    let arrived = rx
        .wait_for(WAIT, "the replay", |a| {
            a.iter().filter(|x| x.path == "new").count() == 2
        })
        .await;
    assert!(arrived
        .iter()
        .filter(|a| a.path == "new")
        .all(|a| a.verified && !String::from_utf8_lossy(&a.body).contains("old tenant")));
    assert_eq!(
        arrived.iter().filter(|a| a.path == "old").count(),
        1,
        "the old subscription got its one delivery, nothing after"
    );
    hookd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_made_again_starts_with_nothing_of_the_deleted_one_embedded() {
    a_tenant_made_again_starts_with_nothing_of_the_deleted_one(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_made_again_starts_with_nothing_of_the_deleted_one_redis() {
    a_tenant_made_again_starts_with_nothing_of_the_deleted_one(Backend::Redis).await;
}

/// `delivery.allow_http` and `allow_private_networks` are the operator's:
/// a tenant's subscription gets them only through its plan. With the
/// operator reaching its loopback receivers, a tenant on a plan without
/// them is refused an http:// or loopback URL (the 422 names the plan's
/// key); a host name that resolves to loopback is blocked at the attempt,
/// and the delivery log shows the tenant neither address. A plan that
/// allows both delivers there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_reach_only_what_their_plan_allows() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\napi_keys = [\"{ADMIN}\"]\n[queue]\ndata_dir = {:?}\npoll_interval = \"20ms\"\n\
         [delivery]\nallow_http = true\nallow_private_networks = true\n\
         [plans.web]\nallow_http = true\n\
         [plans.internal]\nallow_http = true\nallow_private_networks = true\n\
         [[subscriptions]]\nname = \"ops\"\nurl = \"{}\"\nevents = [\"link.*\"]\nsecrets = [\"{SECRET}\"]\n",
        dir.path().display().to_string(),
        rx.url("ops"),
    );
    let hookd = Hookd::start(Config::from_toml(&text).unwrap()).await;
    let admin = hookd.api.clone();
    let plain = tenant(&admin, "plain", None).await;
    let web = tenant(&admin, "web", Some("web")).await;
    let internal = tenant(&admin, "internal", Some("internal")).await;
    let create = |client: &ApiClient, url: String| {
        let client = client.clone();
        async move {
            client
                .post(
                    "/v1/subscriptions",
                    json!({"name": "s", "url": url, "events": ["link.*"]}).to_string(),
                )
                .await
        }
    };
    let refused = create(&plain, rx.url("plain")).await;
    assert_eq!(status(&refused), 422, "{refused:?}");
    let text = refused.unwrap_err().to_string();
    assert!(text.contains("set plans.default.allow_http = true"), "{text}");
    let refused = create(&web, rx.url("web")).await;
    assert_eq!(status(&refused), 422, "{refused:?}");
    let text = refused.unwrap_err().to_string();
    assert!(
        text.contains("127.0.0.1 is a loopback address; set plans.web.allow_private_networks = true"),
        "{text}"
    );
    // A name is resolved at the attempt: blocked there, for good, without
    // the address it resolved to.
    let by_name = rx.url("web").replace("127.0.0.1", "localhost");
    let made = create(&web, by_name).await.expect("a host name passes the URL check");
    let web_sub = made["id"].as_str().unwrap().to_owned();
    let made = create(&internal, rx.url("internal")).await.expect("the plan allows it");
    rx.trust("internal", &[made["secret"].as_str().unwrap()]);
    for tenant in ["web", "internal"] {
        hookd
            .send(json!({"type": "link.clicked", "tenant": tenant, "data": {}}))
            .await;
    }
    hookd.send(json!({"type": "link.clicked", "data": {}})).await;
    rx.wait_for(WAIT, "the operator's and the internal tenant's", |a| {
        a.iter().any(|x| x.path == "internal") && a.iter().any(|x| x.path == "ops")
    })
    .await;
    let dead = support::daemon::wait_for_answer(
        &web,
        &format!("/v1/deliveries?subscription={web_sub}"),
        "the blocked delivery dead",
        |v| v["deliveries"][0]["state"] == "dead",
    )
    .await;
    let delivery = dead["deliveries"][0]["id"].as_str().unwrap().to_owned();
    let detail = web.get(&format!("/v1/deliveries/{delivery}/attempts")).await.unwrap();
    let error = detail["attempts"][0]["error"].as_str().unwrap_or_default().to_owned();
    assert!(
        error.contains("localhost resolves to a loopback address; set plans.web.allow_private_networks = true"),
        "{detail}"
    );
    assert!(
        !detail.to_string().contains("127.0.0.1") && !detail.to_string().contains("::1"),
        "{detail}"
    );
    assert!(
        rx.arrivals().iter().all(|a| a.path != "web"),
        "nothing reached the blocked tenant's URL"
    );
    hookd.stop().await;
}

/// A subscription the platform's operator disabled stays disabled for its
/// tenant (403 `operator_disabled`) until an admin enables it; what the
/// tenant disabled itself it enables again. Before, a tenant undid the
/// operator's disable with one call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_the_operator_disabled_stays_disabled_for_its_tenant() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let hookd = Hookd::start(embedded(dir.path(), "")).await;
    let admin = hookd.api.clone();
    let acme = tenant(&admin, "acme", None).await;
    let id = subscribe(&acme, &rx, "a", json!(["*"])).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let sub = format!("/v1/subscriptions/{id}");
    // Its owner's own disable: its owner enables it again.
    acme.post(&format!("{sub}/disable"), "").await.unwrap();
    assert_eq!(acme.post(&format!("{sub}/enable"), "").await.unwrap()["enabled"], true);
    // The operator's.
    admin
        .post(
            &format!("{sub}/disable"),
            json!({"reason": "abuse report 42"}).to_string(),
        )
        .await
        .unwrap();
    let refused = acme.post(&format!("{sub}/enable"), "").await;
    assert_eq!(status(&refused), 403, "{refused:?}");
    let text = refused.unwrap_err().to_string();
    assert!(
        text.contains("operator_disabled") || text.contains("disabled by the platform's operator"),
        "{text}"
    );
    let shown = acme.get(&sub).await.unwrap();
    assert_eq!(shown["status"], "disabled", "{shown}");
    assert_eq!(shown["disabled_reason"], "abuse report 42", "{shown}");
    // Its tenant's PATCH does not undo it either.
    acme.patch(&sub, json!({"description": "fixed"}).to_string())
        .await
        .unwrap();
    assert_eq!(status(&acme.post(&format!("{sub}/enable"), "").await), 403);
    // An admin enables it; then it is the tenant's again.
    admin.post(&format!("{sub}/enable"), "").await.unwrap();
    acme.post(&format!("{sub}/disable"), "").await.unwrap();
    assert_eq!(acme.post(&format!("{sub}/enable"), "").await.unwrap()["enabled"], true);
    hookd
        .send(json!({"type": "link.clicked", "tenant": "acme", "data": {}}))
        .await;
    rx.wait_for(WAIT, "a delivery once enabled", |a| {
        a.iter().any(|x| x.path == "a" && x.verified)
    })
    .await;
    hookd.stop().await;
}

/// A subscription's test event and an event replayed go through ingest's
/// admission: they take from the tenant's plan rate like the events it
/// sends, whoever asks, and beyond it get the same 429 with Retry-After.
/// Before, both went straight to the queue, past the plan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tests_and_replays_are_held_to_the_plans_rate() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = "[plans.metered]\nevents_per_second = 0.5\nburst = 2\n\
                 [[event_types]]\nname = \"link.clicked\"\nexample = { link = \"l1\" }\n";
    let hookd = Hookd::start(embedded(dir.path(), extra)).await;
    let acme = tenant(&hookd.api, "acme", Some("metered")).await;
    let made = subscribe(&acme, &rx, "a", json!(["link.*"])).await;
    let id = made["id"].as_str().unwrap().to_owned();
    let key = acme_key(&acme);
    let test = format!("/v1/subscriptions/{id}/test");
    // The burst: one event ingested, one test.
    let (status, _) = post_raw(
        &hookd.url,
        "/v1/events",
        ADMIN,
        json!({"type": "link.clicked", "id": "evt_r", "tenant": "acme", "data": {}}),
    )
    .await;
    assert_eq!(status, 202);
    let (status, _) = post_raw(&hookd.url, &test, &key, json!({"type": "link.clicked"})).await;
    assert_eq!(status, 202, "within the burst");
    rx.wait_for(WAIT, "both delivered", |a| a.len() == 2).await;
    support::daemon::wait_for_answer(&acme, "/v1/events/evt_r", "the event logged", |v| {
        v["event"].is_object()
    })
    .await;
    // Beyond it: the test, the replay, and the admin's test of the
    // tenant's subscription alike.
    for (what, path, by) in [
        ("test", test.as_str(), key.as_str()),
        ("replay", "/v1/events/evt_r/replay", key.as_str()),
        ("the admin's test", test.as_str(), ADMIN),
    ] {
        let body = if what == "replay" {
            json!({})
        } else {
            json!({"type": "link.clicked"})
        };
        let (status, retry_after) = post_raw(&hookd.url, path, by, body).await;
        assert_eq!(status, 429, "{what}: beyond the plan's rate");
        let wait: u64 = retry_after.expect("429 says when").parse().unwrap();
        assert!((1..=2).contains(&wait), "{what}: a token every 2 s: {wait}");
    }
    assert_eq!(rx.arrivals().len(), 2, "nothing more was sent");
    hookd.stop().await;
}

/// A deleted subscription's series leave `/metrics`, and subscriptions
/// beyond `telemetry.max_series` share `subscription="other"`, so tenants
/// making and deleting subscriptions cannot grow the metrics without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_series_are_bounded_and_go_with_their_subscription() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[telemetry]\nmax_series = 2\n\
         [[subscriptions]]\nname = \"ops\"\nurl = \"{}\"\nevents = [\"*\"]\nsecrets = [\"{SECRET}\"]\n",
        rx.url("ops")
    );
    let hookd = Hookd::start(embedded(dir.path(), &extra)).await;
    let acme = tenant(&hookd.api, "acme", None).await;
    let a = subscribe(&acme, &rx, "a", json!(["link.*"])).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = subscribe(&acme, &rx, "b", json!(["link.*"])).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    hookd
        .send(json!({"type": "link.clicked", "tenant": "acme", "data": {}}))
        .await;
    rx.wait_for(WAIT, "three deliveries", |got| got.len() == 3).await;
    let delivered = |sub: &str| format!("hookd_deliveries_total{{subscription=\"{sub}\",outcome=\"delivered\"}}");
    // The first two subscriptions prepared have their own series; the
    // third counts as `other`.
    let deadline = Instant::now() + WAIT;
    let text = loop {
        let (_, text) = get_text(&hookd.url, "/metrics").await;
        let total: f64 = ["ops", &a, &b, "other"]
            .iter()
            .filter_map(|s| metric(&text, &delivered(s)))
            .sum();
        if total >= 3.0 {
            break text;
        }
        assert!(Instant::now() < deadline, "the deliveries were never counted: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(metric(&text, &delivered("ops")), Some(1.0), "{text}");
    assert_eq!(metric(&text, &delivered("other")), Some(1.0), "{text}");
    let own: Vec<&String> = [&a, &b].into_iter().filter(|s| text.contains(s.as_str())).collect();
    assert_eq!(own.len(), 1, "one of the tenant's two has its own series: {text}");
    let own = own[0].clone();
    // Deleted, its series go.
    acme.delete(&format!("/v1/subscriptions/{own}")).await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, text) = get_text(&hookd.url, "/metrics").await;
        if !text.contains(own.as_str()) {
            assert_eq!(metric(&text, &delivered("ops")), Some(1.0), "the others stay: {text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the deleted subscription's series stayed: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    hookd.stop().await;
}

/// A process that cannot read the catalogue store for longer than
/// `catalog.max_staleness` refuses the keys made through the API (it can no
/// longer tell a revoked one): 503 `catalog_stale`, failing closed; once it
/// reads the store again they work again. Before, a stale process served a
/// revoked key for as long as its store stayed unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_cannot_read_its_catalogue_refuses_stored_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (config, redis) = config_on(
        Backend::Redis,
        dir.path(),
        "stale",
        "[catalog]\nmax_staleness = \"1s\"\n",
    );
    let redis = redis.unwrap();
    let hookd = Hookd::start(config).await;
    let acme = tenant(&hookd.api, "acme", None).await;
    acme.get("/v1/event-types")
        .await
        .expect("a fresh process takes the key");
    // Redis busy for 4 s: the catalogue poll waits, and its snapshot ages.
    let busy = support::stall_redis(redis.port(), 4_000).await;
    let deadline = Instant::now() + WAIT;
    let refused = loop {
        match acme.get("/v1/event-types").await {
            Err(e) if e.to_string().contains("not read the catalogue store") => break e.to_string(),
            Err(e) => panic!("{e}"),
            Ok(_) => {}
        }
        assert!(
            Instant::now() < deadline && !busy.is_finished(),
            "the stale process kept taking the stored key"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        refused.contains("503") && refused.contains("catalog.max_staleness"),
        "{refused}"
    );
    busy.await.unwrap();
    support::daemon::wait_for_answer(&acme, "/v1/event-types", "the key taken again", |_| true).await;
    hookd.stop().await;
}

/// A tenant whose endpoint does not keep up fills its plan's `max_pending`
/// and is then answered 429 `tenant_queue_full` — its events, its tests,
/// on every process sharing the queue — while another tenant's events go
/// on being taken and delivered; once its deliveries drain it is let in
/// again.
async fn a_tenants_backlog_fills_only_its_own_quota(backend: Backend) {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, _redis) = config_on(
        backend,
        dir.path(),
        "quota",
        "[plans.small]\nmax_pending = 3\n[[event_types]]\nname = \"link.clicked\"\nexample = { link = \"l1\" }\n",
    );
    let first = Hookd::start(config.clone()).await;
    let second = match backend {
        Backend::Embedded => None,
        _ => Some(Hookd::start(config).await),
    };
    let acme = tenant(&first.api, "acme", Some("small")).await;
    let zeta = tenant(&first.api, "zeta", None).await;
    let slow = subscribe(&acme, &rx, "slow", json!(["link.*"])).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    subscribe(&zeta, &rx, "fine", json!(["link.*"])).await;
    if let Some(second) = &second {
        second
            .wait_for(
                "/v1/subscriptions?tenant=acme",
                "acme's subscription on the second process",
                |v| v.to_string().contains(&slow),
            )
            .await;
    }
    // acme's endpoint fails: its deliveries wait for their retries.
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let delivered = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let (fails, oks) = (failing.clone(), delivered.clone());
    rx.answer_with(move |path, id, _| {
        if path != "slow" {
            Answer::ok()
        } else if fails.load(std::sync::atomic::Ordering::SeqCst) {
            Answer::Status(503, vec![])
        } else {
            oks.lock().unwrap().insert(id.to_owned());
            Answer::ok()
        }
    });
    let acme_delivered = move |n: usize| delivered.lock().unwrap().len() == n;
    let event = |tenant: &str, n: u32| json!({"type": "link.clicked", "id": format!("evt_{tenant}{n}"), "tenant": tenant, "data": {}});
    for n in 0..3 {
        let (status, _) = post_raw(&first.url, "/v1/events", ADMIN, event("acme", n)).await;
        assert_eq!(status, 202, "within max_pending");
    }
    // Beyond it, on any process: the event, a batch, and a test.
    let urls: Vec<&str> = std::iter::once(first.url.as_str())
        .chain(second.as_ref().map(|h| h.url.as_str()))
        .collect();
    for url in &urls {
        let (status, retry_after) = post_raw(url, "/v1/events", ADMIN, event("acme", 3)).await;
        assert_eq!(status, 429, "{url}: over max_pending");
        assert_eq!(retry_after.as_deref(), Some("5"));
        let (status, _) = post_raw(url, "/v1/events/batch", ADMIN, json!([event("acme", 4)])).await;
        assert_eq!(status, 429, "{url}: a batch too");
        let (status, _) = post_raw(
            url,
            &format!("/v1/subscriptions/{slow}/test"),
            &acme_key(&acme),
            json!({"type": "link.clicked"}),
        )
        .await;
        assert_eq!(status, 429, "{url}: a test too");
    }
    let refused = first
        .api
        .post("/v1/events", event("acme", 5).to_string())
        .await
        .unwrap_err();
    let text = refused.to_string();
    assert!(
        text.contains("tenant `acme` has 3 deliveries") && text.contains("max_pending") && text.contains("`small`"),
        "{text}"
    );
    // zeta is not held back by acme's backlog, on either process.
    for (n, url) in urls.iter().enumerate() {
        for m in 0..3 {
            let (status, _) = post_raw(url, "/v1/events", ADMIN, event("zeta", (n * 3 + m) as u32)).await;
            assert_eq!(status, 202, "{url}: another tenant's event");
        }
    }
    let zetas = 3 * urls.len();
    rx.wait_for(WAIT, "zeta's events delivered", |got| {
        got.iter().filter(|a| a.path == "fine").count() == zetas
    })
    .await;
    // acme's endpoint is back: its backlog drains, and it is let in again.
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    rx.wait_for(WAIT, "acme's backlog delivered", |got| {
        acme_delivered(3) && !got.is_empty()
    })
    .await;
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, _) = post_raw(&first.url, "/v1/events", ADMIN, event("acme", 6)).await;
        if status == 202 {
            break;
        }
        assert_eq!(status, 429, "refused only for its backlog, until the acks are settled");
        assert!(
            Instant::now() < deadline,
            "acme is let in once its deliveries are settled"
        );
        tokio::task::yield_now().await;
    }
    rx.wait_for(WAIT, "the new event delivered", |got| {
        acme_delivered(4) && !got.is_empty()
    })
    .await;
    if let Some(second) = second {
        second.stop().await;
    }
    first.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_backlog_fills_only_its_own_quota_embedded() {
    a_tenants_backlog_fills_only_its_own_quota(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_backlog_fills_only_its_own_quota_redis() {
    a_tenants_backlog_fills_only_its_own_quota(Backend::Redis).await;
}

/// A tenant's dead letters are read from its own: the listing shows them
/// however many more recent ones another tenant has, and a bulk replay of
/// its subscription scans nothing else and hands back a cursor holding
/// only its own ids.
async fn dead_letters_a_tenant_reaches_are_its_own(backend: Backend) {
    let rx = Receiver::start_with(|_, _, _| Answer::Status(500, vec![])).await;
    let dir = tempfile::tempdir().unwrap();
    let (config, _redis) = config_on(backend, dir.path(), "dead_scope", "");
    let hookd = Hookd::start(config).await;
    let acme = tenant(&hookd.api, "acme", None).await;
    let zeta = tenant(&hookd.api, "zeta", None).await;
    let make = |client: &ApiClient, name: &str| {
        let (client, body) = (
            client.clone(),
            json!({"name": name, "url": rx.url(name), "events": ["link.*"], "max_retries": 0}).to_string(),
        );
        async move {
            client.post("/v1/subscriptions", body).await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let mine = make(&acme, "mine").await;
    make(&zeta, "theirs").await;
    let send = |tenant: &str, n: usize| json!({"type": "link.clicked", "id": format!("evt_{tenant}{n}"), "tenant": tenant, "data": {}});
    let dead_count = |n: usize| move |v: &Value| v["deliveries"].as_array().is_some_and(|d| d.len() == n);
    // acme's one dies first; then zeta's five, all more recent.
    hookd.send(send("acme", 0)).await;
    hookd
        .wait_for("/v1/deliveries/dead", "acme's dead delivery", dead_count(1))
        .await;
    for n in 0..5 {
        hookd.send(send("zeta", n)).await;
    }
    hookd
        .wait_for("/v1/deliveries/dead", "all six dead", dead_count(6))
        .await;
    let listed = acme.get("/v1/deliveries/dead?limit=2").await.unwrap();
    let listed = listed["deliveries"].as_array().unwrap();
    assert_eq!(
        listed.len(),
        1,
        "acme's own, behind zeta's more recent ones: {listed:?}"
    );
    assert_eq!(listed[0]["subscription"], mine.as_str());
    assert_eq!(listed[0]["event_id"], "evt_acme0");
    let theirs = zeta.get("/v1/deliveries/dead?limit=100").await.unwrap();
    assert_eq!(theirs["deliveries"].as_array().unwrap().len(), 5);

    // The bulk replay walks acme's subscription only.
    let page = acme
        .post(
            &format!("/v1/subscriptions/{mine}/replay"),
            json!({"limit": 2}).to_string(),
        )
        .await
        .unwrap();
    assert_eq!(
        (page["replayed"].as_u64(), page["scanned"].as_u64()),
        (Some(1), Some(1)),
        "{page}"
    );
    assert!(page["next_cursor"].is_null(), "{page}");
    rx.wait_for(WAIT, "the replayed delivery", |got| {
        got.iter().filter(|a| a.path == "mine").count() == 2
    })
    .await;
    hookd
        .wait_for("/v1/deliveries/dead", "it died again", dead_count(6))
        .await;
    let page = acme
        .post(
            &format!("/v1/subscriptions/{mine}/replay"),
            json!({"limit": 1}).to_string(),
        )
        .await
        .unwrap();
    assert_eq!(page["replayed"], 1, "{page}");
    let cursor = page["next_cursor"].as_str().expect("a full page has a cursor");
    let zeta_ids: Vec<String> = theirs["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    use base64::Engine as _;
    let decoded = String::from_utf8(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(cursor)
            .unwrap_or_default(),
    )
    .unwrap_or_default();
    for id in &zeta_ids {
        assert!(
            !cursor.contains(id.as_str()) && !decoded.contains(id.as_str()),
            "{decoded}"
        );
    }
    hookd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_a_tenant_reaches_are_its_own_embedded() {
    dead_letters_a_tenant_reaches_are_its_own(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_a_tenant_reaches_are_its_own_redis() {
    dead_letters_a_tenant_reaches_are_its_own(Backend::Redis).await;
}

/// An event is replayed only to its own tenant's subscriptions and the
/// operator's, even by an admin: naming another tenant's subscription is a
/// 422 that says whose it is, and nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_never_replayed_to_another_tenants_subscription() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let hookd = Hookd::start(embedded(dir.path(), "")).await;
    let acme = tenant(&hookd.api, "acme", None).await;
    let zeta = tenant(&hookd.api, "zeta", None).await;
    let mine = subscribe(&acme, &rx, "mine", json!(["link.*"])).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let theirs = subscribe(&zeta, &rx, "theirs", json!(["link.*"])).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    hookd
        .send(json!({"type": "link.clicked", "id": "evt_own", "tenant": "acme", "data": {"secret": "acme's"}}))
        .await;
    rx.wait_for(WAIT, "acme's delivery", |got| got.len() == 1).await;
    support::daemon::wait_for_answer(&acme, "/v1/events/evt_own", "the event logged", |v| {
        v["event"].is_object()
    })
    .await;
    let refused = hookd
        .api
        .post(
            "/v1/events/evt_own/replay?tenant=acme",
            json!({"subscriptions": [theirs]}).to_string(),
        )
        .await;
    assert_eq!(status(&refused), 422, "{refused:?}");
    let text = refused.unwrap_err().to_string();
    assert!(
        text.contains("belongs to tenant `zeta`") && text.contains("tenant `acme`'s"),
        "{text}"
    );
    let replayed = hookd
        .api
        .post(
            "/v1/events/evt_own/replay?tenant=acme",
            json!({"subscriptions": [mine]}).to_string(),
        )
        .await
        .unwrap();
    assert_eq!(replayed["deliveries"][0]["subscription"], mine.as_str(), "{replayed}");
    rx.wait_for(WAIT, "the replay", |got| got.len() == 2).await;
    assert!(rx.at("theirs").is_empty(), "zeta's endpoint got nothing of acme's");
    hookd.stop().await;
}

/// A write's body beyond the limit is answered 413 in hookd's error body,
/// naming the limit, on every write route (the hostile-tenant test found
/// axum's plain-text answer there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_write_is_refused_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let hookd = Hookd::start(embedded(dir.path(), "")).await;
    let acme = tenant(&hookd.api, "acme", None).await;
    let big = format!("{{\"name\": \"{}\"}}", "x".repeat(hookd::api::MAX_WRITE_BODY));
    for (who, client, path) in [
        ("a tenant", &acme, "/v1/subscriptions"),
        ("the admin", &hookd.api, "/v1/tenants"),
        ("the admin", &hookd.api, "/v1/tenants/acme/keys"),
    ] {
        let refused = client.post(path, big.clone()).await;
        assert_eq!(status(&refused), 413, "{who} POST {path}: {refused:?}");
        let text = refused.unwrap_err().to_string();
        assert!(
            text.contains(&format!("over the limit of {} bytes", hookd::api::MAX_WRITE_BODY)),
            "{text}"
        );
    }
    hookd.stop().await;
}

// --- a hostile tenant beside a normal one --------------------------------

/// One call tenant A makes in [`a_hostile_tenant_cannot_touch_another`]:
/// what it is (for the failure message) and its answer's status.
struct Hostile {
    what: String,
    status: Option<u16>,
}

/// One of A's calls, chosen by `rng`: valid ones and hostile ones
/// (absurd numbers, huge or deep bodies, private addresses, B's ids,
/// claims to be B), against A's own subscriptions `own` and B's objects;
/// or one of the platform's calls for A (`admin`): events of A's, in
/// bulk, or with B's event ids.
#[allow(clippy::too_many_arguments)]
async fn hostile_call(
    rng: &mut rand::rngs::StdRng,
    admin: &ApiClient,
    a: &ApiClient,
    rx: &Receiver,
    own: &mut Vec<String>,
    b_sub: &str,
    b_events: &[String],
    b_delivery: &str,
    n: usize,
) -> Hostile {
    use rand::Rng;
    let pick = |rng: &mut rand::rngs::StdRng, list: &[String]| list[rng.random_range(0..list.len())].clone();
    let subscription = |extra: Value| {
        let mut body = json!({"name": format!("a{n}"), "url": rx.url("a"), "events": ["order.*"]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body.to_string()
    };
    // Choices 0 to 6 create a subscription (or try to).
    let choice = rng.random_range(0..16);
    let (what, result) = match choice {
        0 => (
            "a valid subscription".to_owned(),
            a.post("/v1/subscriptions", subscription(json!({}))).await,
        ),
        1 => {
            let extra = match rng.random_range(0..6) {
                0 => json!({"max_in_flight": 1u64 << 62}),
                1 => json!({"max_retries": 1u64 << 31}),
                2 => json!({"timeout": "100000000h"}),
                3 => json!({"rate_limit": {"per_second": 1e308, "burst": u32::MAX}}),
                4 => json!({"events": ["*"]}),
                _ => json!({"name": "x".repeat(10_000)}),
            };
            (
                format!("a subscription with {extra:.60}"),
                a.post("/v1/subscriptions", subscription(extra)).await,
            )
        }
        2 => {
            let headers: serde_json::Map<String, Value> = (0..2000)
                .map(|i| (format!("x-h{i}"), Value::from("v".repeat(1024))))
                .collect();
            (
                "2,000 headers of 1 KB".to_owned(),
                a.post("/v1/subscriptions", subscription(json!({"headers": headers})))
                    .await,
            )
        }
        3 => {
            let events: Vec<String> = (0..50_000).map(|i| format!("type.{i}")).collect();
            (
                "50,000 event patterns".to_owned(),
                a.post("/v1/subscriptions", subscription(json!({"events": events})))
                    .await,
            )
        }
        4 => {
            let url = pick(
                rng,
                &[
                    "http://169.254.169.254/latest/meta-data".to_owned(),
                    "http://10.0.0.1/".to_owned(),
                    "file:///etc/passwd".to_owned(),
                    "http://user:pass@[::1]:1/".to_owned(),
                    "gopher://127.0.0.1:6379/_FLUSHALL".to_owned(),
                ],
            );
            (
                format!("a subscription to {url}"),
                a.post("/v1/subscriptions", subscription(json!({"url": url}))).await,
            )
        }
        5 => {
            let depth = 100_000;
            let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            (
                "a body nested 100,000 deep".to_owned(),
                a.post("/v1/subscriptions", body).await,
            )
        }
        6 => (
            "a body of 8 MiB".to_owned(),
            a.post("/v1/subscriptions", "x".repeat(8 << 20)).await,
        ),
        7 => {
            let id = pick(rng, b_events);
            (
                format!("the platform sends an event of A's with B's id {id}"),
                admin
                    .post(
                        "/v1/events",
                        json!({"type": "order.created", "id": id, "tenant": "tenant-a", "data": {"from": "a"}})
                            .to_string(),
                    )
                    .await,
            )
        }
        8 => {
            let result = a
                .post(
                    "/v1/events",
                    json!({"type": "order.created", "id": format!("evt_a{n}"), "tenant": "tenant-b", "data": {"from": "a"}})
                        .to_string(),
                )
                .await;
            let status = ApiClient::status_of(&result);
            assert_eq!(status, Some(403), "A's key sent an event as B: {result:?}");
            ("an event of B's sent with A's key".to_owned(), result)
        }
        9 => {
            let batch: Vec<Value> = (0..rng.random_range(1..1000))
                .map(|i| {
                    json!({"type": "order.created", "id": format!("evt_a{n}_{i}"), "tenant": "tenant-a", "data": {"from": "a"}})
                })
                .collect();
            (
                format!("the platform sends a batch of {} of A's", batch.len()),
                admin.post("/v1/events/batch", Value::from(batch).to_string()).await,
            )
        }
        10 => {
            let kind = rng.random_range(0..7);
            let path = match kind {
                0 => format!("/v1/subscriptions/{b_sub}"),
                1 => format!("/v1/subscriptions/{b_sub}/secret"),
                2 => format!("/v1/deliveries/{b_delivery}"),
                3 => format!("/v1/deliveries/{b_delivery}/attempts"),
                4 => format!("/v1/events/{}", pick(rng, b_events)),
                5 => format!("/v1/deliveries?subscription={b_sub}"),
                _ => "/v1/tenants/tenant-b".to_owned(),
            };
            let result = a.get(&path).await;
            // B's objects do not exist for A. An event id of B's may be one
            // of A's own too (A may send one with it): then A reads its own
            // event, with none of B's deliveries. A's list of a subscription
            // it does not own holds nothing.
            let leaked = match (&result, kind) {
                (Ok(v), 4) => v.to_string().contains(b_sub) || v.to_string().contains(b_delivery),
                (Ok(v), 5) => v["deliveries"].as_array().is_none_or(|d| !d.is_empty()),
                (Ok(_), _) => true,
                (Err(_), _) => false,
            };
            assert!(!leaked, "A read B's object at {path}: {result:?}");
            (format!("GET {path}"), result)
        }
        11 => {
            let (what, result) = match rng.random_range(0..5) {
                0 => (
                    "PATCH B's subscription",
                    a.patch(
                        &format!("/v1/subscriptions/{b_sub}"),
                        json!({"url": rx.url("a")}).to_string(),
                    )
                    .await,
                ),
                1 => (
                    "DELETE B's subscription",
                    a.delete(&format!("/v1/subscriptions/{b_sub}")).await,
                ),
                2 => (
                    "rotate B's secret",
                    a.post(&format!("/v1/subscriptions/{b_sub}/secret/rotate"), "{}").await,
                ),
                3 => (
                    "replay B's delivery",
                    a.post(&format!("/v1/deliveries/{b_delivery}/replay"), "{}").await,
                ),
                _ => (
                    "test B's subscription",
                    a.post(&format!("/v1/subscriptions/{b_sub}/test"), "{}").await,
                ),
            };
            let status = ApiClient::status_of(&result);
            assert!(
                matches!(status, Some(403) | Some(404)),
                "{what} by A answered {status:?}: {result:?}"
            );
            (what.to_owned(), result)
        }
        12 if !own.is_empty() => {
            let id = pick(rng, own);
            let patch = match rng.random_range(0..4) {
                0 => json!({"max_in_flight": 1u64 << 62}),
                1 => json!({"url": "http://169.254.169.254/"}),
                2 => json!({"enabled": false}),
                _ => json!({"events": ["*"], "enabled": true}),
            };
            (
                format!("PATCH its own {id} with {patch}"),
                a.patch(&format!("/v1/subscriptions/{id}"), patch.to_string()).await,
            )
        }
        13 if !own.is_empty() => {
            let id = pick(rng, own);
            (
                format!("test its own {id}"),
                a.post(&format!("/v1/subscriptions/{id}/test"), "{}").await,
            )
        }
        14 if !own.is_empty() => {
            let id = own.swap_remove(rng.random_range(0..own.len()));
            (
                format!("DELETE its own {id}"),
                a.delete(&format!("/v1/subscriptions/{id}")).await,
            )
        }
        _ => {
            let query = pick(
                rng,
                &[
                    "limit=1000000000".to_owned(),
                    "cursor=%00%ff".to_owned(),
                    format!("cursor={}", "z".repeat(10_000)),
                    "state=nonsense".to_owned(),
                ],
            );
            (
                format!("list deliveries with {query:.40}"),
                a.get(&format!("/v1/deliveries?{query}")).await,
            )
        }
    };
    if let (true, Ok(made)) = (choice <= 6, &result) {
        if let Some(id) = made["id"].as_str() {
            own.push(id.to_owned());
        }
    }
    Hostile {
        what,
        status: ApiClient::status_of(&result),
    }
}

/// What of B's subscription A must never change: everything but its
/// counts, health and times, which B's own traffic moves.
fn b_view(subscription: &Value) -> Value {
    let mut view = subscription.clone();
    if let Some(fields) = view.as_object_mut() {
        fields.retain(|k, _| !(k == "counts" || k.contains("health") || k.ends_with("_at") || k.contains("last")));
    }
    view
}

/// Tenant A makes a random sequence of calls, valid and hostile, while
/// tenant B sends its events: B receives every event, signed with its
/// secret, and nothing else; A reaches nothing of B's and changes nothing
/// of B's subscription; no call is answered 5xx and hookd keeps serving.
/// The seed is fixed (`HOOKD_HOSTILE_SEED` sets another) and named in
/// every failure.
async fn a_hostile_tenant_cannot_touch_another(backend: Backend) {
    use rand::SeedableRng;
    let seed: u64 = std::env::var("HOOKD_HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6_221_079);
    eprintln!("hostile tenant, {backend:?}: seed {seed} (HOOKD_HOSTILE_SEED={seed} runs it again)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, _redis) = config_on(backend, dir.path(), "tenants_hostile", "");
    let hookd = Hookd::start(config).await;
    let admin = hookd.api.clone();
    let a = tenant(&admin, "tenant-a", None).await;
    let b = tenant(&admin, "tenant-b", None).await;
    let b_made = subscribe(&b, &rx, "b", json!(["order.*"])).await;
    let b_sub = b_made["id"].as_str().unwrap().to_owned();
    let before = b_view(&b.get(&format!("/v1/subscriptions/{b_sub}")).await.unwrap());

    // B's first event, so that A has a delivery id of B's to aim at.
    let mut b_events = vec!["evt_b0".to_owned()];
    admin
        .post(
            "/v1/events",
            json!({"type": "order.created", "id": "evt_b0", "tenant": "tenant-b", "data": {"n": 0}}).to_string(),
        )
        .await
        .unwrap();
    let logged = support::daemon::wait_for_answer(
        &b,
        &format!("/v1/deliveries?subscription={b_sub}"),
        "B's first delivery logged",
        |v| v["deliveries"].as_array().is_some_and(|d| !d.is_empty()),
    )
    .await;
    let b_delivery = logged["deliveries"][0]["id"].as_str().unwrap().to_owned();

    let mut own = Vec::new();
    for step in 0..80 {
        let call = hostile_call(
            &mut rng,
            &admin,
            &a,
            &rx,
            &mut own,
            &b_sub,
            &b_events,
            &b_delivery,
            step,
        )
        .await;
        assert!(
            call.status.is_some_and(|s| s < 500),
            "seed {seed}, step {step}: A's call ({}) answered {:?}",
            call.what,
            call.status
        );
        if step % 4 == 0 {
            let id = format!("evt_b{}", b_events.len());
            let sent = admin
                .post(
                    "/v1/events",
                    json!({"type": "order.created", "id": id, "tenant": "tenant-b", "data": {"n": step}}).to_string(),
                )
                .await;
            assert!(
                sent.is_ok(),
                "seed {seed}, step {step}: B's event {id} refused: {sent:?}"
            );
            b_events.push(id);
        }
    }

    // B got every one of its events, each verified with its own secret,
    // and nothing that was not its own.
    let got = rx
        .wait_for(WAIT, "every event of B's", |arrivals| {
            b_events
                .iter()
                .all(|id| arrivals.iter().any(|x| x.path == "b" && x.verified && x.id == *id))
        })
        .await;
    for arrival in got.iter().filter(|x| x.path == "b") {
        assert!(
            arrival.verified,
            "seed {seed}: B's endpoint got an unverified request: {:?}",
            arrival.id
        );
        assert!(
            b_events.contains(&arrival.id),
            "seed {seed}: B's endpoint got {}, not one of B's events",
            arrival.id
        );
        let body: Value = serde_json::from_slice(&arrival.body).unwrap();
        assert_ne!(body["data"]["from"], "a", "seed {seed}: A's body reached B: {body}");
    }
    // B's subscription is as B left it, and B's views hold only its own.
    let after = b_view(&b.get(&format!("/v1/subscriptions/{b_sub}")).await.unwrap());
    assert_eq!(before, after, "seed {seed}: B's subscription changed");
    let listed = b.get("/v1/subscriptions").await.unwrap();
    let ids: Vec<&str> = listed["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(ids, vec![b_sub.as_str()], "seed {seed}: B lists {listed}");
    let deliveries = b.get("/v1/deliveries?limit=500").await.unwrap();
    for d in deliveries["deliveries"].as_array().unwrap() {
        assert_eq!(d["subscription"], b_sub.as_str(), "seed {seed}: B's log lists {d}");
    }
    // hookd is still serving.
    assert_eq!(
        status(&hookd.api.get("/readyz").await),
        200,
        "seed {seed}: hookd no longer ready"
    );
    hookd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_tenant_cannot_touch_another_embedded() {
    a_hostile_tenant_cannot_touch_another(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_tenant_cannot_touch_another_redis() {
    a_hostile_tenant_cannot_touch_another(Backend::Redis).await;
}
