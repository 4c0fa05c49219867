//! End to end, operating hookd: plugins on real deliveries, automatic
//! deactivation with parking and resume, the delivery log, hot reload.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use hookd::api::client::ApiClient;
use hookd::config::Config;
use serde_json::{json, Value};
use support::daemon::{Hookd, WAIT};
use support::plugins::{shared_cache, wasm};
use support::receiver::{Answer, Receiver, SECRET};
use support::RedisServer;

fn base_toml(dir: &Path, queue: &str) -> String {
    format!(
        "[queue]\n{queue}\npoll_interval = \"20ms\"\n[plans.default]\nallow_http = true\nallow_private_networks = true\n[delivery]\nallow_http = true\nallow_private_networks = true\nbackoff_initial = \"100ms\"\n[plugins]\ncache_dir = {cache:?}\ndeadline = \"2s\"\n[history]\nmax_age = \"1h\"\n",
        queue = if queue.is_empty() { format!("data_dir = {:?}", dir.display().to_string()) } else { queue.to_string() },
        cache = shared_cache().display().to_string(),
    )
}

fn subscription(name: &str, url: &str, events: &str, extra: &str) -> String {
    format!("\n[[subscriptions]]\nname = \"{name}\"\nurl = \"{url}\"\nevents = {events}\nsecrets = [\"{SECRET}\"]\n{extra}\n")
}

fn plugin(name: &str, config: &str) -> String {
    format!(
        "[subscriptions.plugin]\npath = {:?}\nconfig = {{ {config} }}\n",
        wasm(name).display().to_string()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_filter_and_reshape_real_deliveries() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = base_toml(dir.path(), "")
        + &subscription(
            "coupons",
            &rx.url("coupons"),
            r#"["coupon.*"]"#,
            &plugin("coupon-filter", "min_amount = \"10\""),
        )
        + &subscription(
            "jq",
            &rx.url("jq"),
            r#"["coupon.*"]"#,
            &plugin(
                "jq",
                "filter = 'select(.data.amount >= 10) | {id: .data.coupon, total: .data.amount}'",
            ),
        )
        + &subscription(
            "redact",
            &rx.url("redact"),
            r#"["coupon.*"]"#,
            &plugin("redactor", "fields = \"customer.email\""),
        )
        + &subscription("slack", &rx.url("slack"), r#"["coupon.*"]"#, &plugin("slack", ""))
        + &subscription("plain", &rx.url("plain"), r#"["coupon.*"]"#, "");
    let hookd = Hookd::start(Config::from_toml(&toml).unwrap()).await;

    let customer = json!({"id": "cus_1", "email": "ana@example.com"});
    hookd.send(json!({"type": "coupon.redeemed", "id": "evt_small", "data": {"coupon": "TINY", "amount": 5, "customer": customer}})).await;
    hookd.send(json!({"type": "coupon.redeemed", "id": "evt_big", "data": {"coupon": "SPRING", "amount": 25, "customer": customer}})).await;

    // coupons: 1 (big), jq: 1 (big), redact: 2, slack: 2, plain: 2.
    let arrivals = rx.wait_for(WAIT, "8 deliveries", |a| a.len() >= 8).await;
    assert!(arrivals.iter().all(|a| a.verified), "plugin output is what gets signed");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.arrivals().len(), 8);

    let coupons = rx.at("coupons");
    assert_eq!(coupons.len(), 1, "the filter dropped the small redemption");
    assert_eq!(coupons[0].id, "evt_big");
    let jq = rx.at("jq");
    assert_eq!(jq.len(), 1);
    assert_eq!(jq[0].json(), json!({"id": "SPRING", "total": 25}));
    for a in rx.at("redact") {
        assert_eq!(a.json()["data"]["customer"]["id"], "cus_1");
        assert_ne!(a.json()["data"]["customer"]["email"], "ana@example.com", "email masked");
    }
    for a in rx.at("slack") {
        let body = a.json();
        assert!(body["text"].as_str().is_some() && body["blocks"].is_array(), "{body}");
    }
    assert_eq!(rx.at("plain")[0].json()["data"]["customer"]["email"], "ana@example.com");

    let filtered = hookd
        .wait_for(
            "/v1/deliveries?subscription=coupons&state=filtered",
            "the filtered delivery in the log",
            |v| v["deliveries"].as_array().is_some_and(|d| d.len() == 1),
        )
        .await;
    assert_eq!(filtered["deliveries"][0]["event_id"], "evt_small");
    hookd.stop().await;
}

/// A plugin out of time is retried like a transient failure, until its
/// retries are spent; one that crashes kills its delivery at once, with
/// the reason; neither touches another subscription's delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_plugin_fails_only_its_own_delivery() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = base_toml(dir.path(), "").replace("deadline = \"2s\"", "deadline = \"50ms\"")
        + &subscription(
            "looping",
            &rx.url("looping"),
            r#"["link.*"]"#,
            &format!("max_retries = 1\n{}", plugin("hostile-endless-loop", "")),
        )
        + &subscription(
            "crashing",
            &rx.url("crashing"),
            r#"["test.*"]"#,
            &format!("max_retries = 5\n{}", plugin("hostile-panic", "")),
        )
        + &subscription("fine", &rx.url("fine"), r#"["*"]"#, "");
    let hookd = Hookd::start(Config::from_toml(&toml).unwrap()).await;
    hookd
        .send(json!({"type": "link.clicked", "id": "evt_loop", "data": {}}))
        .await;
    hookd
        .send(json!({"type": "test.panic", "id": "evt_crash", "data": {}}))
        .await;
    rx.wait_for(WAIT, "the healthy deliveries", |a| {
        a.iter().filter(|a| a.path == "fine").count() == 2
    })
    .await;
    let dead = hookd
        .wait_for("/v1/deliveries/dead", "both plugins' failed deliveries", |v| {
            v["deliveries"].as_array().is_some_and(|d| d.len() == 2)
        })
        .await;
    let of = |name: &str| {
        dead["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["subscription"] == name)
            .unwrap_or_else(|| panic!("{name} in {dead}"))
            .clone()
    };
    let looping = of("looping");
    let error = looping["last_error"].as_str().unwrap();
    assert!(
        error.starts_with("plugin_error:") && error.contains("deadline exceeded"),
        "{error}"
    );
    assert_eq!(looping["attempts"], 2, "the deadline was retried once: {looping}");
    let crashing = of("crashing");
    let error = crashing["last_error"].as_str().unwrap();
    assert!(
        error.starts_with("plugin_error:") && error.contains("crashed"),
        "{error}"
    );
    assert_eq!(crashing["attempts"], 0, "a crash is not retried: {crashing}");
    assert!(rx.at("looping").is_empty() && rx.at("crashing").is_empty());
    hookd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_plugin_fails_at_its_deadline_and_does_not_stall_shutdown() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = base_toml(dir.path(), "").replace("deadline = \"2s\"", "deadline = \"500ms\"")
        + &subscription(
            "sleepy",
            &rx.url("sleepy"),
            r#"["*"]"#,
            &format!("max_retries = 0\n{}", plugin("hostile-sleep", "")),
        )
        + &subscription("fine", &rx.url("fine"), r#"["*"]"#, "");
    let hookd = Hookd::start(Config::from_toml(&toml).unwrap()).await;
    hookd
        .send(json!({"type": "link.clicked", "id": "evt_sleep", "data": {}}))
        .await;
    rx.wait_for(WAIT, "the healthy delivery", |a| a.iter().any(|a| a.path == "fine"))
        .await;
    let dead = hookd
        .wait_for("/v1/deliveries/dead", "the sleeping plugin's delivery to fail", |v| {
            v["deliveries"].as_array().is_some_and(|d| !d.is_empty())
        })
        .await;
    let error = dead["deliveries"][0]["last_error"].as_str().unwrap();
    assert!(
        error.starts_with("plugin_error:") && error.contains("deadline exceeded after 500 ms"),
        "{error}"
    );
    assert!(rx.at("sleepy").is_empty());

    // A call asleep in the plugin when hookd is told to stop ends at its
    // deadline; shutdown does not wait for the sleep.
    hookd
        .send(json!({"type": "link.clicked", "id": "evt_sleep_2", "data": {}}))
        .await;
    rx.wait_for(WAIT, "the second healthy delivery", |a| {
        a.iter().filter(|a| a.path == "fine").count() == 2
    })
    .await;
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(10), hookd.stop())
        .await
        .expect("shutdown is not stalled by a sleeping plugin");
    eprintln!("shutdown with a sleeping plugin took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_run_gives_a_plugin_what_the_daemon_gives_it() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml =
        base_toml(dir.path(), "") + &subscription("echo", &rx.url("echo"), r#"["coupon.*"]"#, &plugin("echo", ""));
    let config = Config::from_toml(&toml).unwrap();
    let settings = config.plugins.clone();
    let hookd = Hookd::start(config).await;
    let event = json!({"type": "coupon.redeemed", "id": "evt_echo", "timestamp": "2026-11-23T10:00:00Z", "data": {"coupon": "SPRING"}});
    hookd.send(event.clone()).await;
    let arrivals = rx.wait_for(WAIT, "the echoed delivery", |a| !a.is_empty()).await;
    let daemon = arrivals[0].json();
    hookd.stop().await;

    let report = hookd::plugin::run_once(&settings, &wasm("echo"), event.to_string().as_bytes(), vec![])
        .await
        .unwrap();
    let (body, _) = report.request.expect("delivered");
    let run: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        run, daemon,
        "`hookd plugin run` and the daemon give the plugin the same input"
    );
    assert_eq!(
        daemon["timestamp"],
        json!(1_795_428_000_000_i64),
        "when the event happened, as the WIT contract says"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_while_plugins_compile() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    // A cache of its own, empty: every plugin compiles cold.
    let cold = dir.path().join("cold-cache");
    let toml = base_toml(dir.path(), "").replace(
        &format!("cache_dir = {:?}", shared_cache().display().to_string()),
        &format!("cache_dir = {:?}", cold.display().to_string()),
    ) + &subscription(
        "jq",
        &rx.url("jq"),
        r#"["coupon.*"]"#,
        &plugin("jq", "filter = '{id: .data.coupon}'"),
    ) + &subscription("slack", &rx.url("slack"), r#"["coupon.*"]"#, &plugin("slack", ""))
        + &subscription("plain", &rx.url("plain"), r#"["coupon.*"]"#, "");
    let started = std::time::Instant::now();
    let hookd = Hookd::start(Config::from_toml(&toml).unwrap()).await;
    let answered = tokio::time::timeout(
        Duration::from_secs(2),
        hookd.send(json!({"type": "coupon.redeemed", "id": "evt_cold", "data": {"coupon": "SPRING"}})),
    )
    .await;
    eprintln!(
        "POST /v1/events answered after {:?} with plugins compiling cold",
        started.elapsed()
    );
    assert!(answered.is_ok(), "POST /v1/events got no answer while plugins compiled");
    rx.wait_for(
        Duration::from_secs(60),
        "every delivery once the plugins are loaded",
        |a| a.len() >= 3,
    )
    .await;
    eprintln!("delivered through the plugins after {:?}", started.elapsed());
    assert_eq!(rx.at("jq")[0].json(), json!({"id": "SPRING"}));
    hookd.stop().await;
}

async fn failing_endpoint_is_disabled_then_resumed(queue: &str) {
    let rx = Receiver::start_with(|path, _, _| {
        if path == "flaky" {
            Answer::Status(500, vec![])
        } else {
            Answer::ok()
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let toml = base_toml(dir.path(), queue).replace(
        "backoff_initial = \"100ms\"",
        "backoff_initial = \"100ms\"\nmax_retries = 0\ndisable_after_failures = 3",
    ) + &subscription("flaky", &rx.url("flaky"), r#"["order.*"]"#, "max_in_flight = 1")
        + &subscription("ops", &rx.url("ops"), r#"["hookd.subscription.*"]"#, "");
    let hookd = Hookd::start(Config::from_toml(&toml).unwrap()).await;

    for n in 0..3 {
        hookd
            .send(json!({"type": "order.placed", "id": format!("evt_fail_{n}"), "data": {"n": n}}))
            .await;
    }
    let sub = hookd
        .wait_for("/v1/subscriptions/flaky", "the subscription to be disabled", |v| {
            v["status"] == "disabled"
        })
        .await;
    assert_eq!(sub["disabled_reason"], "3 consecutive failed attempts", "{sub}");
    // The notification arrives as an event for subscriptions that ask for it.
    let ops = rx
        .wait_for(WAIT, "hookd.subscription.disabled", |a| {
            a.iter().any(|a| a.path == "ops")
        })
        .await;
    let note = ops.iter().find(|a| a.path == "ops").unwrap().json();
    assert_eq!(note["type"], "hookd.subscription.disabled");
    assert_eq!(note["data"]["subscription"], "flaky");

    // While disabled: nothing is sent, deliveries are parked.
    let sent_before = rx.at("flaky").len();
    for n in 0..5 {
        hookd
            .send(json!({"type": "order.placed", "id": format!("evt_parked_{n}"), "data": {"n": n}}))
            .await;
    }
    hookd
        .wait_for(
            "/v1/deliveries?subscription=flaky&state=parked",
            "5 parked deliveries",
            |v| v["deliveries"].as_array().is_some_and(|d| d.len() == 5),
        )
        .await;
    assert_eq!(
        rx.at("flaky").len(),
        sent_before,
        "nothing is sent to a disabled subscription"
    );

    rx.answer_with(|_, _, _| Answer::ok());
    let enabled = hookd.api.post("/v1/subscriptions/flaky/enable", "").await.unwrap();
    assert_eq!(enabled["resumed"], 5);
    let arrivals = rx
        .wait_for(WAIT, "the 5 resumed deliveries", |a| {
            a.iter()
                .filter(|a| a.path == "flaky" && a.id.starts_with("evt_parked_"))
                .count()
                >= 5
        })
        .await;
    let order: Vec<&str> = arrivals
        .iter()
        .filter(|a| a.path == "flaky" && a.id.starts_with("evt_parked_"))
        .map(|a| a.id.as_str())
        .collect();
    // Every parked delivery resumes, exactly once, in order.
    assert_eq!(
        order,
        [
            "evt_parked_0",
            "evt_parked_1",
            "evt_parked_2",
            "evt_parked_3",
            "evt_parked_4"
        ]
    );
    let sub = hookd.api.get("/v1/subscriptions/flaky").await.unwrap();
    assert_eq!(sub["status"], "active");
    rx.wait_for(WAIT, "hookd.subscription.recovered", |a| {
        a.iter()
            .any(|a| a.path == "ops" && a.json()["type"] == "hookd.subscription.recovered")
    })
    .await;

    // Every attempt is in the log, secrets redacted.
    let first = hookd.api.get("/v1/events/evt_fail_0").await.unwrap();
    let text = first.to_string();
    assert!(
        text.contains("\"status\":500") || text.contains("\"last_status\":500"),
        "{first:#}"
    );
    assert!(!text.contains(&SECRET[6..]), "no secret in the log");
    hookd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_answers_do_not_disable_a_subscription() {
    // 429 and 503 only: the endpoint is up and asks for patience.
    let rx = Receiver::start_with(|_, id, _| {
        if id.ends_with(['0', '2', '4']) {
            Answer::Status(429, vec![])
        } else {
            Answer::Status(503, vec![])
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let toml = base_toml(dir.path(), "").replace(
        "backoff_initial = \"100ms\"",
        "backoff_initial = \"100ms\"\nmax_retries = 0\ndisable_after_failures = 3",
    ) + &subscription("busy", &rx.url("busy"), r#"["order.*"]"#, "max_in_flight = 1");
    let hookd = Hookd::start(Config::from_toml(&toml).unwrap()).await;
    for n in 0..6 {
        hookd
            .send(json!({"type": "order.placed", "id": format!("evt_busy_{n}"), "data": {"n": n}}))
            .await;
    }
    // No retries left: each delivery ends dead, or parked if the
    // subscription was (wrongly) disabled.
    let list = hookd
        .wait_for("/v1/deliveries?subscription=busy", "6 settled deliveries", |v| {
            v["deliveries"]
                .as_array()
                .is_some_and(|d| d.len() == 6 && d.iter().all(|d| d["state"] == "dead" || d["state"] == "parked"))
        })
        .await;
    // Health is written in the background: give it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sub = hookd.api.get("/v1/subscriptions/busy").await.unwrap();
    assert_eq!(
        sub["status"], "active",
        "six 429/503 answers in a row disable nothing: {sub}"
    );
    let dead = list["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["state"] == "dead")
        .count();
    assert_eq!(dead, 6, "every delivery was attempted: {list:#}");
    hookd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_endpoint_is_disabled_then_resumed_embedded() {
    failing_endpoint_is_disabled_then_resumed("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_endpoint_is_disabled_then_resumed_redis() {
    let redis = RedisServer::start();
    let queue = format!(
        "redis_url = \"{}\"\nkey_prefix = \"{}\"",
        redis.url(),
        support::unique_prefix("operate")
    );
    failing_endpoint_is_disabled_then_resumed(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reload_adds_subscriptions_and_rejects_a_broken_file() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hookd.toml");
    let base = base_toml(&dir.path().join("data"), "");
    std::fs::write(
        &path,
        base.clone() + &subscription("first", &rx.url("first"), r#"["*"]"#, ""),
    )
    .unwrap();
    let hookd = Hookd::start(Config::load(Some(&path)).unwrap()).await;
    hookd.send(json!({"type": "a.b", "id": "evt_1", "data": {}})).await;
    rx.wait_for(WAIT, "the first delivery", |a| a.len() == 1).await;

    // A broken file is rejected; the running config keeps delivering.
    std::fs::write(&path, base.clone() + "[[subscriptions]]\nname = \"broken\"\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    hookd.send(json!({"type": "a.b", "id": "evt_2", "data": {}})).await;
    rx.wait_for(WAIT, "delivery under the old config", |a| {
        a.iter().any(|a| a.id == "evt_2")
    })
    .await;

    // A valid change takes effect without a restart.
    std::fs::write(
        &path,
        base + &subscription("first", &rx.url("first"), r#"["*"]"#, "")
            + &subscription("second", &rx.url("second"), r#"["*"]"#, ""),
    )
    .unwrap();
    hookd
        .wait_for("/v1/subscriptions", "the reloaded config", |v| {
            v["subscriptions"].as_array().is_some_and(|s| s.len() == 2)
        })
        .await;
    let answer = hookd.send(json!({"type": "a.b", "id": "evt_3", "data": {}})).await;
    assert_eq!(answer["deliveries"], 2);
    rx.wait_for(WAIT, "delivery to the new subscription", |a| {
        a.iter().any(|a| a.path == "second" && a.id == "evt_3")
    })
    .await;
    hookd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_revokes_keys_and_refuses_what_needs_a_restart() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hookd.toml");
    let base = base_toml(&dir.path().join("data"), "");
    let first = subscription("first", &rx.url("first"), r#"["*"]"#, "");
    let with_keys = |keys: &str| format!("[server]\napi_keys = [{keys}]\n") + &base + &first;
    std::fs::write(&path, with_keys("\"old-key-000000001\"")).unwrap();
    let hookd = Hookd::start(Config::load(Some(&path)).unwrap()).await;
    let old = ApiClient::new(&hookd.url, Some("old-key-000000001".into()));
    let new = ApiClient::new(&hookd.url, Some("second-key-000001".into()));
    assert!(old.get("/v1/subscriptions").await.is_ok());
    assert_eq!(ApiClient::status_of(&new.get("/v1/subscriptions").await), Some(401));

    // A key removed from the file stops working, without a restart.
    std::fs::write(&path, with_keys("\"second-key-000001\"")).unwrap();
    let deadline = Instant::now() + WAIT;
    while ApiClient::status_of(&old.get("/v1/subscriptions").await) != Some(401) {
        assert!(Instant::now() < deadline, "the removed key still works");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(new.get("/v1/subscriptions").await.is_ok());

    // A change that needs a restart is refused whole: the subscription
    // added beside it is not taken, the shards stay and enqueues work.
    let shards = with_keys("\"second-key-000001\"").replace("[queue]\n", "[queue]\nshards = 32\n")
        + &subscription("second", &rx.url("second"), r#"["*"]"#, "");
    std::fs::write(&path, shards).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let listed = new.get("/v1/subscriptions").await.unwrap();
    assert_eq!(listed["subscriptions"].as_array().unwrap().len(), 1, "{listed}");
    let answer = new
        .post(
            "/v1/events",
            json!({"type": "a.b", "id": "evt_after", "data": {}}).to_string(),
        )
        .await
        .unwrap();
    assert_eq!(answer["deliveries"], 1);
    rx.wait_for(WAIT, "the event after the refused reload", |a| {
        a.iter().any(|a| a.id == "evt_after")
    })
    .await;
    hookd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_after_a_plugin_use_the_headers_in_force() {
    // The first attempt fails; the retry waits long enough for a reload.
    let rx = Receiver::start_with(|_, _, attempt| {
        if attempt == 1 {
            Answer::Status(500, vec![])
        } else {
            Answer::ok()
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hookd.toml");
    let base =
        base_toml(&dir.path().join("data"), "").replace("backoff_initial = \"100ms\"", "backoff_initial = \"4s\"");
    let with_key = |key: &str| {
        base.clone()
            + &subscription(
                "keyed",
                &rx.url("keyed"),
                r#"["coupon.*"]"#,
                &format!(
                    "headers = {{ \"x-api-key\" = \"{key}\" }}\n{}",
                    plugin("redactor", "fields = \"customer.email\"")
                ),
            )
    };
    std::fs::write(&path, with_key("old-credential")).unwrap();
    let hookd = Hookd::start(Config::load(Some(&path)).unwrap()).await;
    hookd
        .send(json!({"type": "coupon.redeemed", "id": "evt_keyed", "data": {"customer": {"email": "a@b.c"}}}))
        .await;
    let first = rx.wait_for(WAIT, "the first attempt", |a| a.len() == 1).await;
    assert_eq!(first[0].headers["x-api-key"], "old-credential");
    assert_eq!(
        first[0].json()["data"]["customer"]["email"],
        "[redacted]",
        "the plugin ran"
    );

    // The credential rotates in the config; the retry sends the new one,
    // with the plugin's body.
    std::fs::write(&path, with_key("rotated-credential")).unwrap();
    let all = rx.wait_for(WAIT, "the retry", |a| a.len() == 2).await;
    assert_eq!(all[1].headers["x-api-key"], "rotated-credential");
    assert_eq!(all[1].json()["data"]["customer"]["email"], "[redacted]");
    assert!(all.iter().all(|a| a.verified));
    hookd.stop().await;
}

/// Walks a bulk replay to its end, `limit` deliveries a call, and returns
/// (replayed, pages, the first page's cursor).
async fn bulk_replay(api: &ApiClient, subscription: &str, body: Value) -> (u64, usize, Option<String>) {
    let path = format!("/v1/subscriptions/{subscription}/replay");
    let (mut replayed, mut pages, mut first_cursor) = (0, 0, None);
    let mut body = body;
    loop {
        let page = api.post(&path, body.to_string()).await.unwrap();
        pages += 1;
        replayed += page["replayed"].as_u64().unwrap();
        match page["next_cursor"].as_str() {
            None => return (replayed, pages, first_cursor),
            Some(cursor) => {
                first_cursor.get_or_insert_with(|| cursor.to_owned());
                body = json!({ "cursor": cursor, "limit": body["limit"] });
            }
        }
    }
}

/// The id of `event`'s delivery in a `/v1/deliveries` answer.
fn delivery_of(listed: &serde_json::Value, event: &str) -> String {
    listed["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["event_id"] == event)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn failed_deliveries_are_retried_and_replayed(queue: &str) {
    // `dead` fails until told otherwise; `later` fails each event's first
    // attempt only, and its retries wait an hour.
    let rx = Receiver::start_with(|path, _, attempt| match path {
        "later" if attempt > 1 => Answer::ok(),
        _ => Answer::Status(500, vec![]),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let toml = base_toml(dir.path(), queue).replace("backoff_initial = \"100ms\"", "backoff_initial = \"1h\"")
        + &subscription("dead", &rx.url("dead"), r#"["order.*"]"#, "max_retries = 0")
        + &subscription("later", &rx.url("later"), r#"["invoice.*"]"#, "max_retries = 3");
    let hookd = Hookd::start(Config::from_toml(&toml).unwrap()).await;
    for n in 0..6 {
        hookd
            .send(json!({"type": "order.placed", "id": format!("evt_dead_{n}"), "data": {"n": n}}))
            .await;
    }
    let listed = hookd
        .wait_for(
            "/v1/deliveries?subscription=dead&state=dead",
            "6 dead deliveries",
            |v| v["deliveries"].as_array().is_some_and(|d| d.len() == 6),
        )
        .await;
    let id_of = |event: &str| delivery_of(&listed, event);
    // Everything but evt_dead_5 succeeds from now on.
    rx.answer_with(|path, id, attempt| match path {
        "later" if attempt > 1 => Answer::ok(),
        "dead" if id != "evt_dead_5" => Answer::ok(),
        _ => Answer::Status(500, vec![]),
    });

    // One dead delivery, retried now, once the queue has it among the dead
    // too (the log is written before the settlement is applied; until
    // then a retry is a 409 saying to try again in a moment).
    let one = id_of("evt_dead_0");
    hookd
        .wait_for(&format!("/v1/deliveries/{one}"), "the queue to hold it as dead", |v| {
            v["standing"]["state"] == "dead"
        })
        .await;
    let answer = hookd
        .api
        .post(&format!("/v1/deliveries/{one}/retry"), "")
        .await
        .unwrap();
    assert_eq!(answer["action"], "replayed");
    rx.wait_for(WAIT, "the retried delivery", |a| {
        a.iter()
            .any(|a| a.path == "dead" && a.id == "evt_dead_0" && a.attempt == 2)
    })
    .await;
    hookd
        .wait_for(&format!("/v1/deliveries/{one}/attempts"), "it to be delivered", |v| {
            v["delivery"]["state"] == "delivered"
        })
        .await;
    let again = hookd.api.post(&format!("/v1/deliveries/{one}/retry"), "").await;
    assert!(
        matches!(&again, Err(hookd::api::client::Error::Status { status, message })
            if status.as_u16() == 409 && message.contains("delivered")),
        "{again:?}"
    );
    let unknown = hookd
        .api
        .post("/v1/deliveries/dlv_0000000000000000000000000000000000/retry", "")
        .await;
    assert!(
        matches!(&unknown, Err(hookd::api::client::Error::Status { status, .. }) if status.as_u16() == 404),
        "{unknown:?}"
    );

    // The other five in bulk, two a call.
    let (replayed, pages, first_cursor) = bulk_replay(&hookd.api, "dead", json!({"limit": 2})).await;
    assert_eq!(replayed, 5);
    assert!(pages >= 3, "{pages} pages");
    let arrivals = rx
        .wait_for(WAIT, "the 5 replayed deliveries", |a| {
            (1..6).all(|n| {
                let id = format!("evt_dead_{n}");
                a.iter().any(|a| a.path == "dead" && a.id == id && a.attempt == 2)
            })
        })
        .await;
    assert!(arrivals.iter().all(|a| a.verified));
    // evt_dead_5 is dead again. Resuming the walk from its first cursor
    // replays nothing (idempotent); a new walk replays it once more.
    hookd
        .wait_for(
            "/v1/deliveries?subscription=dead&state=dead",
            "evt_dead_5 dead again",
            |v| {
                v["deliveries"]
                    .as_array()
                    .is_some_and(|d| d.len() == 1 && d[0]["attempts"] == 1)
            },
        )
        .await;
    let resumed = bulk_replay(&hookd.api, "dead", json!({"cursor": first_cursor.unwrap(), "limit": 2})).await;
    assert_eq!(resumed.0, 0, "a walk never replays a delivery twice");
    let fresh = bulk_replay(&hookd.api, "dead", json!({"limit": 2})).await;
    assert_eq!(fresh.0, 1);
    rx.wait_for(WAIT, "evt_dead_5 a third time", |a| {
        a.iter().any(|a| a.id == "evt_dead_5" && a.attempt == 3)
    })
    .await;
    for n in 0..5 {
        let id = format!("evt_dead_{n}");
        assert_eq!(
            rx.at("dead").iter().filter(|a| a.id == id).count(),
            2,
            "{id}: once failed, once replayed"
        );
    }

    // Retries waiting an hour: one pulled forward, then the rest in bulk.
    for n in 0..3 {
        hookd
            .send(json!({"type": "invoice.paid", "id": format!("evt_later_{n}"), "data": {"n": n}}))
            .await;
    }
    let waiting = hookd
        .wait_for(
            "/v1/deliveries?subscription=later&state=retrying",
            "3 retrying deliveries",
            |v| v["deliveries"].as_array().is_some_and(|d| d.len() == 3),
        )
        .await;
    let first = waiting["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["event_id"] == "evt_later_0")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let answer = hookd
        .api
        .post(&format!("/v1/deliveries/{first}/retry"), "")
        .await
        .unwrap();
    assert_eq!(answer["action"], "retried");
    rx.wait_for(WAIT, "the retry pulled forward", |a| {
        a.iter().any(|a| a.id == "evt_later_0" && a.attempt == 2)
    })
    .await;
    let (replayed, _, _) = bulk_replay(&hookd.api, "later", json!({"state": "retrying"})).await;
    assert_eq!(replayed, 2, "evt_later_0 no longer waits");
    rx.wait_for(WAIT, "the bulk retries", |a| {
        (1..3).all(|n| {
            let id = format!("evt_later_{n}");
            a.iter().any(|a| a.id == id && a.attempt == 2)
        })
    })
    .await;
    let bad = hookd
        .api
        .post(
            "/v1/subscriptions/later/replay",
            json!({"state": "delivered"}).to_string(),
        )
        .await;
    assert!(
        matches!(&bad, Err(hookd::api::client::Error::Status { status, .. }) if status.as_u16() == 400),
        "{bad:?}"
    );
    hookd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_deliveries_are_retried_and_replayed_embedded() {
    failed_deliveries_are_retried_and_replayed("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_deliveries_are_retried_and_replayed_redis() {
    let redis = RedisServer::start();
    let queue = format!(
        "redis_url = \"{}\"\nkey_prefix = \"{}\"",
        redis.url(),
        support::unique_prefix("recover")
    );
    failed_deliveries_are_retried_and_replayed(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_delivery_replayed_by_either_route_is_logged() {
    // POST /v1/deliveries/{id}/replay and .../retry replay a dead delivery
    // the same way: the log records who moved it, whichever was called.
    let rx = Receiver::start_with(|_, _, _| Answer::Status(500, vec![])).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = base_toml(dir.path(), "") + &subscription("dead", &rx.url("dead"), r#"["order.*"]"#, "max_retries = 0");
    let hookd = Hookd::start(Config::from_toml(&toml).unwrap()).await;
    for id in ["evt_by_replay", "evt_by_retry"] {
        hookd.send(json!({"type": "order.placed", "id": id, "data": {}})).await;
    }
    let listed = hookd
        .wait_for(
            "/v1/deliveries?subscription=dead&state=dead",
            "2 dead deliveries",
            |v| v["deliveries"].as_array().is_some_and(|d| d.len() == 2),
        )
        .await;
    let id_of = |event: &str| delivery_of(&listed, event);
    let (by_replay, by_retry) = (id_of("evt_by_replay"), id_of("evt_by_retry"));
    rx.answer_with(|_, _, _| Answer::ok());

    let answer = hookd
        .api
        .post(&format!("/v1/deliveries/{by_replay}/replay"), "")
        .await
        .unwrap();
    assert_eq!(answer["replayed"], true);
    let answer = hookd
        .api
        .post(&format!("/v1/deliveries/{by_retry}/retry"), "")
        .await
        .unwrap();
    assert_eq!(answer["action"], "replayed");
    for id in [&by_replay, &by_retry] {
        let logged = hookd
            .wait_for(&format!("/v1/deliveries/{id}/attempts"), "the replay delivered", |v| {
                v["delivery"]["state"] == "delivered"
            })
            .await;
        assert_eq!(logged["delivery"]["note"], "replayed by an operator", "{id}: {logged}");
        assert_eq!(logged["attempts"].as_array().map(Vec::len), Some(2), "{logged}");
    }
    hookd.stop().await;
}

/// Every time in `value` (a field named `*_at`, `since`, `from`, `to`,
/// `at` or a standing's `due`, holding a string or number), with its path.
fn times_in(value: &Value, path: &str, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                let path = format!("{path}.{key}");
                // `due` is also a count, in the queue's depth.
                let timely = key.ends_with("_at")
                    || ["since", "from", "to", "at"].contains(&key.as_str())
                    || (key == "due" && path.ends_with("standing.due"));
                if timely && (v.is_string() || v.is_number()) {
                    out.push((path, v.clone()));
                } else {
                    times_in(v, &path, out);
                }
            }
        }
        Value::Array(items) => {
            for (n, v) in items.iter().enumerate() {
                times_in(v, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_answer_writes_times_alike() {
    // RFC 3339 in UTC with milliseconds, as the delivery log's routes
    // always wrote them; others wrote whole seconds, nanoseconds or Unix
    // milliseconds.
    let rx = Receiver::start_with(|_, _, _| Answer::Status(500, vec![])).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = base_toml(dir.path(), "") + &subscription("dead", &rx.url("dead"), r#"["order.*"]"#, "max_retries = 0");
    let hookd = Hookd::start(Config::from_toml(&toml).unwrap()).await;
    hookd
        .send(json!({"type": "order.placed", "id": "evt_times", "data": {}}))
        .await;
    let listed = hookd
        .wait_for("/v1/deliveries/dead", "a dead delivery", |v| {
            v["deliveries"].as_array().is_some_and(|d| d.len() == 1)
        })
        .await;
    let id = listed["deliveries"][0]["id"].as_str().unwrap().to_owned();
    // The queue shows it dead before the log's batched write lands.
    hookd
        .wait_for(&format!("/v1/deliveries/{id}"), "the dead delivery in the log", |d| {
            d["standing"]["state"] == "dead"
        })
        .await;
    hookd.api.post("/v1/subscriptions/dead/disable", "").await.unwrap();
    let mut times = Vec::new();
    times_in(&listed, "dead", &mut times);
    for path in [
        format!("/v1/deliveries/{id}"),
        format!("/v1/deliveries/{id}/attempts"),
        "/v1/deliveries".to_owned(),
        "/v1/subscriptions/dead".to_owned(),
        "/v1/events/evt_times".to_owned(),
        "/v1/stats".to_owned(),
    ] {
        let answer = hookd.api.get(&path).await.unwrap();
        times_in(&answer, &path, &mut times);
    }
    for field in ["standing.since", "subscriptions/dead.since", "stats.from", "stats.to"] {
        assert!(
            times
                .iter()
                .any(|(path, _)| path.replace('/', "").contains(&field.replace('/', ""))),
            "no {field} in {times:?}"
        );
    }
    for (path, time) in &times {
        let text = time
            .as_str()
            .unwrap_or_else(|| panic!("{path}: {time} is not a string"));
        assert!(
            text.len() == 24 && text.ends_with('Z') && text.as_bytes()[19] == b'.',
            "{path}: {text} is not RFC 3339 UTC with milliseconds"
        );
        chrono::DateTime::parse_from_rfc3339(text).unwrap_or_else(|e| panic!("{path}: {text}: {e}"));
    }
    hookd.stop().await;
}

/// `processes` hookd processes sharing one queue (`queue`: TOML of the
/// `[queue]` table, or empty for the embedded store, then one process) pace
/// a rate-limited subscription together.
async fn rate_limits_pace_one_subscription(queue: &str, processes: usize) {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = base_toml(dir.path(), queue)
        + &subscription(
            "paced",
            &rx.url("paced"),
            r#"["order.*"]"#,
            "max_retries = 0\nrate_limit = { per_second = 5, burst = 2 }",
        )
        + &subscription("free", &rx.url("free"), r#"["order.*"]"#, "");
    let mut others = Vec::new();
    for _ in 1..processes {
        others.push(Hookd::start(Config::from_toml(&toml).unwrap()).await);
    }
    let hookd = Hookd::start(Config::from_toml(&toml).unwrap()).await;
    // The 12 events split between the processes, posted at the same time,
    // so each process claims some at once.
    let all: Vec<&Hookd> = others.iter().chain([&hookd]).collect();
    // No token can be taken before the events exist, so the bucket starts
    // no earlier than this.
    let posted = std::time::Instant::now();
    let posts = all.iter().enumerate().map(|(p, h)| {
        let events: Vec<Value> = (0..12)
            .filter(|n| n % all.len() == p)
            .map(|n| json!({"type": "order.placed", "id": format!("evt_paced_{n}"), "data": {"n": n}}))
            .collect();
        h.api.post("/v1/events/batch", Value::Array(events).to_string())
    });
    for answer in futures_util::future::join_all(posts).await {
        answer.unwrap();
    }
    let arrivals = rx
        .wait_for(WAIT, "12 paced deliveries", |a| {
            a.iter().filter(|a| a.path == "paced").count() >= 12
        })
        .await;
    let paced: Vec<_> = arrivals.iter().filter(|a| a.path == "paced").collect();
    let free: Vec<_> = arrivals.iter().filter(|a| a.path == "free").collect();
    assert_eq!(free.len(), 12, "the other subscription got everything");
    assert!(
        free.last().unwrap().at < paced.last().unwrap().at,
        "the unlimited subscription is not held back by the limited one"
    );
    // Never faster than the limit, whichever process sent: two at once,
    // then one per 200 ms. Delivery n's token is taken at least 200 (n - 1)
    // ms after the bucket's first, and that one no earlier than the posts
    // began; an arrival is never before its token. (Measuring from the
    // first arrival instead would need slack for that request's own
    // latency, which on a loaded machine has no bound.) The 2 ms cover the
    // bucket's whole-millisecond clock.
    for (n, a) in paced.iter().enumerate().skip(2) {
        let earliest = Duration::from_millis(200 * (n as u64 - 1) - 2);
        assert!(
            a.at.duration_since(posted) >= earliest,
            "delivery {n} came {:?} after the posts began, before {earliest:?}",
            a.at.duration_since(posted)
        );
    }
    // Waiting for the limit used no retry: one attempt each (max_retries = 0
    // would have made any failure dead).
    let mut ids: Vec<&str> = paced.iter().map(|a| a.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 12, "each delivered once");
    assert!(paced.iter().all(|a| a.attempt == 1 && a.verified));
    let page = hookd
        .wait_for(
            "/v1/deliveries?subscription=paced&state=delivered",
            "12 delivered",
            |v| v["deliveries"].as_array().is_some_and(|d| d.len() == 12),
        )
        .await;
    assert!(
        page["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["attempts"] == 1),
        "{page:#}"
    );
    for other in others {
        other.stop().await;
    }
    hookd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_pace_one_subscription_without_using_retries_or_slowing_others() {
    rate_limits_pace_one_subscription("", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_shared_by_processes_sharing_redis() {
    let redis = RedisServer::start();
    let queue = format!(
        "redis_url = \"{}\"\nkey_prefix = \"{}\"",
        redis.url(),
        support::unique_prefix("paced")
    );
    rate_limits_pace_one_subscription(&queue, 3).await;
}
