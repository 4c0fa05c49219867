//! End to end: events in through the API and the Redis stream, signed
//! webhooks out to a real receiver, on both queue backends.

mod support;

use std::time::Duration;

use hookd::api::client::ApiClient;
use hookd::config::Config;
use serde_json::json;
use support::receiver::{Answer, Receiver, SECRET};
use support::RedisServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(15);

/// Where a test's hookd keeps its queue.
enum Backend {
    Embedded,
    Redis,
}

/// hookd running in this process on a port-0 listener.
struct Hookd {
    api: ApiClient,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
    _redis: Option<RedisServer>,
    redis_url: Option<String>,
    prefix: String,
}

impl Hookd {
    async fn start(backend: Backend, toml: &str) -> Hookd {
        let dir = tempfile::tempdir().unwrap();
        let prefix = support::unique_prefix("pipeline");
        let (redis, queue_toml) = match backend {
            Backend::Embedded => (
                None,
                format!("[queue]\ndata_dir = {:?}\n", dir.path().display().to_string()),
            ),
            Backend::Redis => {
                let redis = RedisServer::start();
                let t = format!("[queue]\nredis_url = \"{}\"\nkey_prefix = \"{prefix}\"\n", redis.url());
                (Some(redis), t)
            }
        };
        // The test's own keys follow [delivery]; a test that refuses private
        // networks says so itself.
        let private = if toml.contains("allow_private_networks") {
            ""
        } else {
            "allow_private_networks = true\n"
        };
        let text = format!(
            "{queue_toml}poll_interval = \"20ms\"\n[delivery]\nallow_http = true\n{private}backoff_initial = \"100ms\"\nbackoff_multiplier = 2.0\n{toml}"
        );
        let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("test config: {e}\n{text}"));
        let redis_url = config.queue.redis_url.as_ref().map(|u| u.expose().to_owned());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = ApiClient::new(
            &format!("http://{}", listener.local_addr().unwrap()),
            Some("test-key-00000001".into()),
        );
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(hookd::run(config, listener, shutdown.clone()));
        Hookd {
            api,
            shutdown,
            task: Some(task),
            _dir: dir,
            _redis: redis,
            redis_url,
            prefix,
        }
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    async fn send(&self, event: serde_json::Value) -> serde_json::Value {
        self.api.post("/v1/events", event.to_string()).await.unwrap()
    }
}

fn subscription(name: &str, url: &str, events: &str, extra: &str) -> String {
    format!(
        "\n[[subscriptions]]\nname = \"{name}\"\nurl = \"{url}\"\nevents = {events}\nsecrets = [\"{SECRET}\"]\n{extra}\n"
    )
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod with_embedded {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Embedded).await })*
        }
        mod with_redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Redis).await })*
        }
    };
}

on_both_backends!(
    delivers_signed_webhooks_to_matching_subscriptions,
    duplicate_event_ids_are_delivered_once,
    failures_retry_with_the_same_id_until_acknowledged,
    exhausted_deliveries_are_dead_listed_and_replayable,
    retry_after_is_honoured,
    gone_stops_deliveries_to_the_subscription,
    private_addresses_are_refused_without_retry,
    batch_ingest_is_all_or_nothing,
    a_queue_beyond_max_queue_depth_refuses_ingest_with_503,
);

async fn delivers_signed_webhooks_to_matching_subscriptions(backend: Backend) {
    let rx = Receiver::start().await;
    let subs = subscription(
        "crm",
        &rx.url("crm"),
        r#"["coupon.*", "stamp.rewarded"]"#,
        r#"headers = { "x-api-key" = "k-123" }"#,
    ) + &subscription("clicks", &rx.url("clicks"), r#"["link.clicked"]"#, "")
        + &subscription("all", &rx.url("all"), r#"["*"]"#, "");
    let hookd = Hookd::start(backend, &subs).await;

    let a = hookd
        .send(json!({"type": "coupon.redeemed", "id": "evt_c1", "data": {"coupon": "SPRING", "amount": 12}}))
        .await;
    assert_eq!(a, json!({"id": "evt_c1", "duplicate": false, "deliveries": 2}));
    let b = hookd
        .send(json!({"type": "link.clicked", "data": {"link": "l1"}}))
        .await;
    assert_eq!(b["deliveries"], 2);
    let c = hookd
        .send(json!({"type": "user.updated", "data": {"user": "u1"}}))
        .await;
    assert_eq!(c["deliveries"], 1);

    let arrivals = rx.wait_for(WAIT, "5 deliveries", |a| a.len() >= 5).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let arrivals_after = rx.arrivals();
    assert_eq!(
        arrivals_after.len(),
        5,
        "exactly one delivery per matching subscription"
    );
    assert!(arrivals.iter().all(|a| a.verified), "every request verifies");

    let crm = rx.at("crm");
    assert_eq!(crm.len(), 1);
    let h = &crm[0].headers;
    assert_eq!(h["webhook-id"], "evt_c1");
    assert_eq!(h["x-api-key"], "k-123");
    assert_eq!(h["content-type"], "application/json");
    assert!(h["user-agent"].to_str().unwrap().starts_with("hookd/"));
    assert!(h["content-digest"].to_str().unwrap().starts_with("sha-256=:"));
    let ts: i64 = h["webhook-timestamp"].to_str().unwrap().parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - ts).abs() < 30);
    let body = crm[0].json();
    assert_eq!(body["type"], "coupon.redeemed");
    assert_eq!(body["data"], json!({"coupon": "SPRING", "amount": 12}));
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));

    assert_eq!(rx.at("clicks").len(), 1);
    assert_eq!(rx.at("all").len(), 3);
    assert_eq!(rx.at("all").iter().filter(|a| a.id == "evt_c1").count(), 1);
    hookd.stop().await;
}

async fn duplicate_event_ids_are_delivered_once(backend: Backend) {
    let rx = Receiver::start().await;
    let hookd = Hookd::start(backend, &subscription("crm", &rx.url("crm"), r#"["*"]"#, "")).await;
    let event = json!({"type": "stamp.rewarded", "id": "evt_dup", "data": {"stamps": 10}});
    assert_eq!(hookd.send(event.clone()).await["duplicate"], false);
    assert_eq!(
        hookd.send(event.clone()).await,
        json!({"id": "evt_dup", "duplicate": true, "deliveries": 0})
    );
    rx.wait_for(WAIT, "the delivery", |a| !a.is_empty()).await;
    assert_eq!(
        hookd.send(event).await["duplicate"],
        true,
        "still a duplicate after delivery"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.arrivals().len(), 1);
    hookd.stop().await;
}

async fn failures_retry_with_the_same_id_until_acknowledged(backend: Backend) {
    let rx = Receiver::start_with(|_, _, attempt| match attempt {
        1 => Answer::Status(500, vec![]),
        2 => Answer::Status(302, vec![("location", "http://127.0.0.1:1/elsewhere".into())]),
        _ => Answer::ok(),
    })
    .await;
    let hookd = Hookd::start(backend, &subscription("crm", &rx.url("crm"), r#"["*"]"#, "")).await;
    hookd
        .send(json!({"type": "coupon.redeemed", "id": "evt_r", "data": {"amount": 3}}))
        .await;
    let arrivals = rx.wait_for(WAIT, "3 attempts", |a| a.len() >= 3).await;
    assert_eq!(arrivals.iter().map(|a| a.attempt).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(arrivals.iter().all(|a| a.id == "evt_r" && a.verified));
    assert!(
        arrivals.windows(2).all(|w| w[0].body == w[1].body),
        "retries resend identical bytes"
    );
    let gap = arrivals[2].at - arrivals[1].at;
    assert!(
        gap >= Duration::from_millis(120),
        "second retry waits longer than the first backoff: {gap:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.arrivals().len(), 3, "nothing after the acknowledgement");
    hookd.stop().await;
}

async fn exhausted_deliveries_are_dead_listed_and_replayable(backend: Backend) {
    let rx = Receiver::start_with(|_, _, _| Answer::Status(500, vec![])).await;
    let hookd = Hookd::start(
        backend,
        &subscription("crm", &rx.url("crm"), r#"["*"]"#, "max_retries = 2"),
    )
    .await;
    hookd
        .send(json!({"type": "coupon.redeemed", "id": "evt_dead", "data": {}}))
        .await;
    rx.wait_for(WAIT, "3 attempts", |a| a.len() >= 3).await;

    let dead = wait_for_dead(&hookd, 1).await;
    let d = &dead[0];
    assert_eq!(d["event_id"], "evt_dead");
    assert_eq!(d["subscription"], "crm");
    assert_eq!(d["attempts"], 3);
    assert!(d["last_error"].as_str().unwrap().contains("500"), "{d}");
    let id = d["id"].as_str().unwrap();
    let shown = hookd.api.get(&format!("/v1/deliveries/{id}")).await.unwrap();
    assert_eq!(shown["standing"]["state"], "dead");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(rx.arrivals().len(), 3, "5xx after the last retry: no more attempts");

    rx.answer_with(|_, _, _| Answer::ok());
    let replayed = hookd
        .api
        .post(&format!("/v1/deliveries/{id}/replay"), "")
        .await
        .unwrap();
    assert_eq!(replayed["replayed"], true);
    rx.wait_for(WAIT, "the replayed delivery", |a| a.len() >= 4).await;
    assert!(wait_for_dead(&hookd, 0).await.is_empty());
    let again = hookd
        .api
        .post(&format!("/v1/deliveries/{id}/replay"), "")
        .await
        .unwrap_err();
    assert!(again.to_string().contains("not dead"), "{again}");
    hookd.stop().await;
}

async fn wait_for_dead(hookd: &Hookd, n: usize) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let answer = hookd.api.get("/v1/deliveries/dead").await.unwrap();
        let dead = answer["deliveries"].as_array().unwrap().clone();
        if dead.len() == n {
            return dead;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expected {n} dead deliveries, have {dead:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn retry_after_is_honoured(backend: Backend) {
    let rx = Receiver::start_with(|_, _, attempt| match attempt {
        1 => Answer::Status(429, vec![("retry-after", "1".into())]),
        _ => Answer::ok(),
    })
    .await;
    let hookd = Hookd::start(backend, &subscription("crm", &rx.url("crm"), r#"["*"]"#, "")).await;
    hookd.send(json!({"type": "coupon.redeemed", "data": {}})).await;
    let arrivals = rx.wait_for(WAIT, "2 attempts", |a| a.len() >= 2).await;
    let gap = arrivals[1].at - arrivals[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "Retry-After: 1 honoured over a 100ms backoff: {gap:?}"
    );
    hookd.stop().await;
}

async fn gone_stops_deliveries_to_the_subscription(backend: Backend) {
    let rx = Receiver::start_with(|path, _, _| {
        if path == "gone" {
            Answer::Status(410, vec![])
        } else {
            Answer::ok()
        }
    })
    .await;
    let subs = subscription("gone", &rx.url("gone"), r#"["*"]"#, "max_in_flight = 1")
        + &subscription("fine", &rx.url("fine"), r#"["*"]"#, "");
    let hookd = Hookd::start(backend, &subs).await;
    hookd
        .send(json!({"type": "link.clicked", "id": "evt_g1", "data": {}}))
        .await;
    rx.wait_for(WAIT, "the 410", |a| a.iter().any(|a| a.path == "gone"))
        .await;
    for n in 2..=4 {
        hookd
            .send(json!({"type": "link.clicked", "id": format!("evt_g{n}"), "data": {}}))
            .await;
    }
    rx.wait_for(WAIT, "4 deliveries to the healthy subscription", |a| {
        a.iter().filter(|a| a.path == "fine").count() >= 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.at("gone").len(), 1, "nothing is sent after 410 Gone");
    let dead = wait_for_dead(&hookd, 1).await;
    assert!(dead[0]["last_error"].as_str().unwrap().contains("410"));
    hookd.stop().await;
}

async fn private_addresses_are_refused_without_retry(backend: Backend) {
    let rx = Receiver::start().await;
    // A host name, checked after DNS: the config check refuses an IP
    // literal that is not public before any delivery is made.
    let hookd = Hookd::start(
        backend,
        &format!(
            "allow_private_networks = false\n{}",
            subscription("crm", &rx.url("crm").replace("127.0.0.1", "localhost"), r#"["*"]"#, "")
        ),
    )
    .await;
    hookd.send(json!({"type": "coupon.redeemed", "data": {}})).await;
    let dead = wait_for_dead(&hookd, 1).await;
    let error = dead[0]["last_error"].as_str().unwrap();
    assert!(
        error.contains("blocked") && error.contains("localhost resolves to"),
        "{error}"
    );
    assert!(error.contains("loopback"), "{error}");
    assert_eq!(dead[0]["attempts"], 1, "a refused address is not retried");
    assert!(rx.arrivals().is_empty(), "the receiver saw nothing");
    hookd.stop().await;
}

async fn batch_ingest_is_all_or_nothing(backend: Backend) {
    let rx = Receiver::start().await;
    let hookd = Hookd::start(backend, &subscription("crm", &rx.url("crm"), r#"["*"]"#, "")).await;
    let bad = json!([{"type": "a.b", "data": {}}, {"type": "a.b", "data": 5}]);
    let err = hookd
        .api
        .post("/v1/events/batch", bad.to_string())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("400") && err.contains("event 1") && err.contains("`data`"),
        "{err}"
    );
    let good: Vec<_> = (0..50)
        .map(|n| json!({"type": "link.clicked", "id": format!("evt_b{n}"), "data": {"n": n}}))
        .collect();
    let answer = hookd
        .api
        .post("/v1/events/batch", serde_json::to_string(&good).unwrap())
        .await
        .unwrap();
    assert_eq!(answer["results"].as_array().unwrap().len(), 50);
    rx.wait_for(WAIT, "50 deliveries", |a| a.len() >= 50).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rx.arrivals().len(), 50, "the refused batch queued nothing");
    hookd.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_error() {
    let rx = Receiver::start().await;
    let hookd = Hookd::start(
        Backend::Embedded,
        &format!(
            "[ingest]\nmax_body_bytes = 1024\n{}",
            subscription("crm", &rx.url("crm"), r#"["*"]"#, "")
        ),
    )
    .await;
    let cases: &[(&str, &str)] = &[
        ("{not json", "400"),
        (r#"{"data": {}}"#, "`type` is missing"),
        (r#"{"type": "coupon..redeemed", "data": {}}"#, "`type`"),
        (
            r#"{"type": "coupon.redeemed", "data": "text"}"#,
            "must be a JSON object",
        ),
        (r#"{"type": "coupon.redeemed"}"#, "`data` is missing"),
    ];
    for (body, want) in cases {
        let err = hookd
            .api
            .post("/v1/events", body.to_string())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{body}: {err}");
    }
    // Nested deeper than ingest.max_depth (64 by default): a 400 naming
    // the limit, alone or in a batch.
    let deep = format!(
        r#"{{"type": "a.b", "data": {{"a": {}{}}}}}"#,
        "[".repeat(100),
        "]".repeat(100)
    );
    let err = hookd
        .api
        .post("/v1/events", deep.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("400") && err.contains("`data` nests 101 levels deep, over the limit of 64 (ingest.max_depth)"),
        "{err}"
    );
    let batch = format!(r#"[{{"type": "a.b", "data": {{}}}}, {deep}]"#);
    let err = hookd.api.post("/v1/events/batch", batch).await.unwrap_err().to_string();
    assert!(
        err.contains("400") && err.contains("event 1: ") && err.contains("ingest.max_depth"),
        "{err}"
    );
    let big = json!({"type": "a.b", "data": {"x": "y".repeat(2000)}}).to_string();
    let err = hookd.api.post("/v1/events", big).await.unwrap_err().to_string();
    assert!(err.contains("413") && err.contains("1024"), "{err}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rx.arrivals().is_empty(), "nothing refused was delivered");
    hookd.stop().await;
}

#[tokio::test]
async fn api_keys_guard_v1_but_not_health() {
    let hookd = Hookd::start(
        Backend::Embedded,
        "[server]\napi_keys = [\"test-key-00000001\", \"other-key-0000001\"]\n",
    )
    .await;
    let base = hookd.api_base();
    let no_key = ApiClient::new(&base, None)
        .post("/v1/events", r#"{"type":"a.b","data":{}}"#)
        .await
        .unwrap_err();
    assert!(no_key.to_string().contains("401"), "{no_key}");
    let wrong = ApiClient::new(&base, Some("nope".into()))
        .get("/v1/deliveries/dead")
        .await
        .unwrap_err();
    assert!(wrong.to_string().contains("401"), "{wrong}");
    let other = ApiClient::new(&base, Some("other-key-0000001".into()));
    assert!(other.get("/v1/deliveries/dead").await.is_ok());
    assert_eq!(
        ApiClient::new(&base, None).get("/healthz").await.unwrap()["status"],
        "ok"
    );
    assert_eq!(
        ApiClient::new(&base, None).get("/readyz").await.unwrap()["status"],
        "ready"
    );
    hookd.stop().await;
}

impl Hookd {
    fn api_base(&self) -> String {
        self.api.base().to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stream_producers_are_delivered_and_malformed_entries_set_aside() {
    let rx = Receiver::start().await;
    let hookd = Hookd::start(
        Backend::Redis,
        &subscription("crm", &rx.url("crm"), r#"["coupon.*"]"#, ""),
    )
    .await;
    let client = redis::Client::open(hookd.redis_url.clone().unwrap()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let stream = format!("{}:events", hookd.prefix);
    let add = |fields: Vec<(&'static str, String)>| {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&stream).arg("*");
        for (k, v) in fields {
            cmd.arg(k).arg(v);
        }
        cmd
    };
    let _: String = add(vec![
        ("type", "coupon.redeemed".into()),
        ("data", r#"{"amount":7}"#.into()),
        ("id", "evt_s1".into()),
    ])
    .query_async(&mut conn)
    .await
    .unwrap();
    let _: String = add(vec![("type", "coupon.redeemed".into()), ("data", "[1,2]".into())])
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: String = add(vec![("data", "{}".into())]).query_async(&mut conn).await.unwrap();
    let deep = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    let _: String = add(vec![("type", "coupon.redeemed".into()), ("data", deep)])
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: String = add(vec![
        ("type", "coupon.redeemed".into()),
        ("data", r#"{"amount":8}"#.into()),
        ("id", "evt_s1".into()),
    ])
    .query_async(&mut conn)
    .await
    .unwrap();

    let arrivals = rx.wait_for(WAIT, "the stream event", |a| !a.is_empty()).await;
    assert_eq!(arrivals[0].id, "evt_s1");
    assert_eq!(arrivals[0].json()["data"], json!({"amount": 7}));

    let rejected_key = format!("{}:events:rejected", hookd.prefix);
    let deadline = std::time::Instant::now() + WAIT;
    let rejected: redis::streams::StreamRangeReply = loop {
        let r: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&rejected_key)
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        if r.ids.len() >= 3 || std::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(rejected.ids.len(), 3, "every malformed entry is set aside");
    let reasons: Vec<String> = rejected
        .ids
        .iter()
        .map(|e| e.get::<String>("reason").unwrap())
        .collect();
    assert!(reasons[0].contains("must be a JSON object"), "{reasons:?}");
    assert!(reasons[1].contains("`type` is missing"), "{reasons:?}");
    assert!(
        reasons[2].contains("nests 100001 levels deep, over the limit of 64 (ingest.max_depth)"),
        "{reasons:?}"
    );
    assert_eq!(
        rejected.ids[0].get::<String>("field:data").unwrap(),
        "[1,2]",
        "the original entry is kept"
    );

    // Everything read was acknowledged and removed from the inbox.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let len: usize = redis::cmd("XLEN").arg(&stream).query_async(&mut conn).await.unwrap();
        if len == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{len} entries left in the stream");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rx.arrivals().len(), 1, "the repeated stream id was a duplicate");
    hookd.stop().await;
}

/// An attempt keeps at most 64 response headers and 8 KiB of them, marking
/// what was cut; the dead listing answers without bodies (their size
/// instead), while one delivery's answer keeps its body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_headers_are_capped_and_the_dead_list_has_no_bodies() {
    let rx = Receiver::start_with(|_, _, _| {
        let headers = (0..90)
            .map(|n| (&*Box::leak(format!("x-h{n}").into_boxed_str()), "v".repeat(300)))
            .collect();
        Answer::Status(500, headers)
    })
    .await;
    let hookd = Hookd::start(
        Backend::Embedded,
        &subscription("crm", &rx.url("crm"), r#"["*"]"#, "max_retries = 0"),
    )
    .await;
    hookd
        .send(json!({"type": "coupon.redeemed", "id": "evt_big", "data": {"pad": "p".repeat(5000)}}))
        .await;
    let dead = wait_for_dead(&hookd, 1).await;
    let d = &dead[0];
    assert!(d.get("body").is_none(), "no body in the dead listing: {d}");
    let id = d["id"].as_str().unwrap();
    let shown = hookd.api.get(&format!("/v1/deliveries/{id}")).await.unwrap();
    let body = shown["body"].as_str().unwrap();
    assert!(body.contains(&"p".repeat(5000)), "one delivery keeps its body");
    assert_eq!(d["body_bytes"], body.len());

    let deadline = std::time::Instant::now() + WAIT;
    let attempts = loop {
        let answer = hookd.api.get(&format!("/v1/deliveries/{id}/attempts")).await;
        if let Ok(a) = answer {
            if a["attempts"].as_array().is_some_and(|a| !a.is_empty()) {
                break a["attempts"].clone();
            }
        }
        assert!(std::time::Instant::now() < deadline, "no attempt logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let headers: Vec<(String, String)> = serde_json::from_value(attempts[0]["response_headers"].clone()).unwrap();
    let bytes: usize = headers.iter().map(|(n, v)| n.len() + v.len()).sum();
    assert!(
        headers.len() <= 64 && bytes <= 8192 + 200,
        "{} headers, {bytes} bytes",
        headers.len()
    );
    let (name, value) = headers.last().unwrap();
    assert_eq!(name, "[truncated]", "{headers:?}");
    assert!(value.contains("not kept"), "{value}");
    hookd.stop().await;
}

/// The API's subscription answers show an endpoint URL without its
/// userinfo or query values, and no header value.
#[tokio::test]
async fn subscription_answers_redact_url_credentials() {
    let hookd = Hookd::start(
        Backend::Embedded,
        &subscription(
            "crm",
            "https://hook-user:url-pass@crm.example.com/in?token=query-tok",
            r#"["*"]"#,
            r#"headers = { "x-api-key" = "header-key" }"#,
        ),
    )
    .await;
    let answer = hookd.api.get("/v1/subscriptions/crm").await.unwrap().to_string();
    for secret in ["hook-user", "url-pass", "query-tok", "header-key"] {
        assert!(!answer.contains(secret), "{secret} shown: {answer}");
    }
    assert!(answer.contains("crm.example.com/in?token=[redacted]"), "{answer}");
    hookd.stop().await;
}

/// POSTs `body` to `path` over a raw connection: the status, the
/// `Retry-After` header if any, and the body.
async fn raw_post(base: &str, path: &str, body: &str) -> (u16, Option<String>, String) {
    raw(base, "POST", path, body).await
}

/// A request over a raw connection: the status, the `Retry-After` header
/// if any, and the body.
async fn raw(base: &str, method: &str, path: &str, body: &str) -> (u16, Option<String>, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer test-key-00000001\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let retry_after = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("retry-after:")
            .map(|v| v.trim().to_owned())
    });
    (status, retry_after, body.to_owned())
}

async fn a_queue_beyond_max_queue_depth_refuses_ingest_with_503(backend: Backend) {
    let redis = matches!(backend, Backend::Redis);
    // The endpoint asks for an hour's patience: every delivery stays
    // scheduled, so the queue grows.
    let rx = Receiver::start_with(|_, _, _| Answer::Status(503, vec![("retry-after", "3600".into())])).await;
    let hookd = Hookd::start(
        backend,
        &format!(
            "[ingest]\nmax_queue_depth = 3\n{}",
            subscription("crm", &rx.url("crm"), r#"["*"]"#, "")
        ),
    )
    .await;
    let base = hookd.api_base();
    for n in 0..4 {
        hookd
            .send(json!({"type": "order.placed", "id": format!("evt_deep_{n}"), "data": {"n": n}}))
            .await;
    }
    rx.wait_for(WAIT, "4 first attempts", |a| a.len() >= 4).await;
    // The depth is sampled every 5 s: within a few, producers are refused.
    let event = json!({"type": "order.placed", "id": "evt_refused", "data": {}}).to_string();
    let deadline = std::time::Instant::now() + WAIT;
    let (status, retry_after, body) = loop {
        let answer = raw_post(&base, "/v1/events", &event).await;
        if answer.0 != 202 && answer.0 != 200 {
            break answer;
        }
        assert!(std::time::Instant::now() < deadline, "never refused: {answer:?}");
        // Accepted meanwhile (a duplicate after the first): not sampled yet.
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(status, 503, "{body}");
    let retry_after: u64 = retry_after.expect("a Retry-After header").parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert!(
        body.contains("ingest.max_queue_depth"),
        "the message names the key: {body}"
    );
    let batch = json!([{"type": "order.placed", "id": "evt_refused_b", "data": {}}]).to_string();
    let (status, retry_after, body) = raw_post(&base, "/v1/events/batch", &batch).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        retry_after.is_some() && body.contains("ingest.max_queue_depth"),
        "{body}"
    );
    let (_, _, metrics) = raw(&base, "GET", "/metrics", "").await;
    let refused: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hookd_ingest_refused_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(refused >= 2.0, "refusals are counted: {refused}");

    // The stream is not read meanwhile, and nothing in it is lost.
    let mut conn = None;
    let stream = format!("{}:events", hookd.prefix);
    if redis {
        let client = redis::Client::open(hookd.redis_url.clone().unwrap()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let _: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("type")
            .arg("order.placed")
            .arg("data")
            .arg("{}")
            .arg("id")
            .arg("evt_streamed")
            .query_async(&mut c)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let len: usize = redis::cmd("XLEN").arg(&stream).query_async(&mut c).await.unwrap();
        assert_eq!(len, 1, "the entry waits in the stream");
        assert!(!rx.arrivals().iter().any(|a| a.id == "evt_streamed"));
        conn = Some(c);
    }

    // The endpoint recovers and the retries are pulled forward: the queue
    // drains, producers are accepted again and the stream resumes.
    rx.answer_with(|_, _, _| Answer::ok());
    let list = hookd
        .api
        .get("/v1/deliveries?subscription=crm&state=retrying")
        .await
        .unwrap();
    for d in list["deliveries"].as_array().unwrap() {
        let id = d["id"].as_str().unwrap();
        hookd.api.post(&format!("/v1/deliveries/{id}/retry"), "").await.unwrap();
    }
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (status, _, body) = raw_post(&base, "/v1/events", &event).await;
        if status == 202 || status == 200 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(std::time::Instant::now() < deadline, "still refused: {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if let Some(mut c) = conn {
        rx.wait_for(WAIT, "the streamed event", |a| a.iter().any(|a| a.id == "evt_streamed"))
            .await;
        let len: usize = redis::cmd("XLEN").arg(&stream).query_async(&mut c).await.unwrap();
        assert_eq!(len, 0);
    }
    hookd.stop().await;
}

/// An entry whose acknowledgement fails after its event was queued (the
/// ambiguous outcome) stays pending and is read again once idle for the
/// lease. Sent without an `id`, it is the same event each time
/// (`evt_stream_<entry id>`), so it is delivered once. Redis's ACL makes
/// hookd's XACK and XDEL fail for real until the test allows them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_entry_read_again_after_a_lost_ack_is_delivered_once() {
    let rx = Receiver::start().await;
    let redis = RedisServer::start();
    assert_eq!(
        redis.command(&["ACL", "SETUSER", "hookd", "on", ">pw", "~*", "&*", "+@all", "-xack", "-xdel"]),
        "OK"
    );
    let prefix = support::unique_prefix("lost_ack");
    let url = format!("redis://hookd:pw@127.0.0.1:{}/0", redis.port());
    let toml = format!(
        "[queue]\nredis_url = {url:?}\nkey_prefix = {prefix:?}\nlease = \"1s\"\npoll_interval = \"20ms\"\n\
         [delivery]\nallow_http = true\nallow_private_networks = true\ntimeout = \"400ms\"\n{}",
        subscription("crm", &rx.url("crm"), r#"["coupon.*"]"#, "")
    );
    let hookd = support::daemon::Hookd::start(Config::from_toml(&toml).unwrap()).await;
    let stream = format!("{prefix}:events");
    let entry = redis.command(&["XADD", &stream, "*", "type", "coupon.redeemed", "data", r#"{"n":1}"#]);
    let expected = hookd::ingest::stream::entry_event_id(&entry);

    // Delivered once; its XACK is refused, so it stays pending.
    let first = rx.wait_for(WAIT, "the stream event", |a| !a.is_empty()).await;
    assert_eq!(first[0].id, expected);
    // Taken over again after the 1 s lease, more than once.
    let group = hookd::config::Config::from_toml("").unwrap().ingest.stream_group;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let pending = redis.command(&["XPENDING", &stream, &group, "-", "+", "10"]);
        let deliveries: u64 = pending.lines().nth(3).and_then(|n| n.trim().parse().ok()).unwrap_or(0);
        if deliveries >= 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the entry was not read again: {pending}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Acknowledged once XACK is allowed again; still one delivery.
    assert_eq!(redis.command(&["ACL", "SETUSER", "hookd", "+xack", "+xdel"]), "OK");
    let deadline = std::time::Instant::now() + WAIT;
    while redis.command(&["XLEN", &stream]) != "0" {
        assert!(std::time::Instant::now() < deadline, "the entry was never acknowledged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ids: Vec<String> = rx.arrivals().iter().map(|a| a.id.clone()).collect();
    assert_eq!(ids, vec![expected], "one delivery of one event");
    hookd.stop().await;
}

/// Redis answers an enqueue later than `queue.redis_response_timeout` (it
/// may or may not apply it): the producer gets a 503 that names the event
/// and says to retry with the same id, and the retry delivers the event
/// once — a duplicate if the first was applied late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_answered_late_is_safe_to_retry_with_the_same_id() {
    let rx = Receiver::start().await;
    let redis = RedisServer::start();
    let toml = format!(
        "[server]\napi_keys = [\"test-key-00000001\"]\n\
         [queue]\nredis_url = {url:?}\nkey_prefix = {prefix:?}\nredis_response_timeout = \"300ms\"\nredis_connect_timeout = \"300ms\"\npoll_interval = \"20ms\"\nlease = \"2s\"\n\
         [delivery]\nallow_http = true\nallow_private_networks = true\ntimeout = \"500ms\"\n{sub}",
        url = redis.url(),
        prefix = support::unique_prefix("late_enqueue"),
        sub = subscription("crm", &rx.url("crm"), r#"["coupon.*"]"#, ""),
    );
    let hookd = support::daemon::Hookd::start(Config::from_toml(&toml).unwrap()).await;
    let event = json!({"type": "coupon.redeemed", "id": "evt_late", "data": {"n": 1}}).to_string();
    hookd
        .api
        .post("/v1/events", event)
        .await
        .expect("Redis answers in time");
    rx.wait_for(WAIT, "the first event", |a| !a.is_empty()).await;
    // A claim the dispatcher sends during the stall is answered late too:
    // its deliveries wait for the lease (2 s here) to fall due again. The
    // stall is long enough for a loaded machine to send the enqueue inside
    // it (2 s was not, once), and below Redis's 5 s busy-script threshold.
    let busy = support::stall_redis(redis.port(), 4_000).await;

    let again = json!({"type": "coupon.redeemed", "id": "evt_late_2", "data": {"n": 2}}).to_string();
    let err = hookd
        .api
        .post("/v1/events", again.clone())
        .await
        .expect_err("a late answer")
        .to_string();
    assert!(err.contains("503"), "{err}");
    assert!(
        err.contains("evt_late_2") && err.contains("Retry with the same `id`"),
        "{err}"
    );
    busy.await.unwrap();

    // The enqueue went out on a pooled connection and was applied once the
    // stall ended (the retry is a duplicate), or it needed a new
    // connection, whose handshake the stall held past its timeout, and was
    // never sent (the retry queues it). Which one depends on what else
    // broke pooled connections meanwhile; either way the producer's retry
    // with the same id delivers the event once.
    let retried = hookd.api.post("/v1/events", again).await.expect("Redis is back");
    assert!(retried["duplicate"].is_boolean(), "{retried}");
    eprintln!(
        "the late enqueue was {}",
        if retried["duplicate"] == true {
            "applied late"
        } else {
            "never sent"
        }
    );
    rx.wait_for(WAIT, "both events", |a| a.len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ids: Vec<String> = rx.arrivals().iter().map(|a| a.id.clone()).collect();
    ids.sort();
    assert_eq!(ids, ["evt_late", "evt_late_2"], "each delivered once");
    hookd.stop().await;
}

/// Consumer names do not pile up in the stream's group: names of crashed
/// processes go once idle for the lease with nothing pending (what was
/// pending on them is taken over first), and a clean stop removes its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_consumers_of_gone_processes_are_removed() {
    let rx = Receiver::start().await;
    let redis = RedisServer::start();
    let prefix = support::unique_prefix("consumers");
    let stream = format!("{prefix}:events");
    let group = Config::from_toml("").unwrap().ingest.stream_group;
    // Two processes that crashed: one with nothing pending, one holding an entry.
    assert_eq!(
        redis.command(&["XGROUP", "CREATE", &stream, &group, "0", "MKSTREAM"]),
        "OK"
    );
    assert_eq!(
        redis.command(&["XGROUP", "CREATECONSUMER", &stream, &group, "crashed-1"]),
        "1"
    );
    redis.command(&[
        "XADD",
        &stream,
        "*",
        "type",
        "coupon.redeemed",
        "data",
        "{}",
        "id",
        "evt_held",
    ]);
    redis.command(&[
        "XREADGROUP",
        "GROUP",
        &group,
        "crashed-2",
        "COUNT",
        "1",
        "STREAMS",
        &stream,
        ">",
    ]);
    let consumers = |redis: &RedisServer| -> Vec<String> {
        let info = redis.command(&["XINFO", "CONSUMERS", &stream, &group]);
        let lines: Vec<&str> = info.lines().collect();
        lines
            .windows(2)
            .filter(|w| w[0] == "name")
            .map(|w| w[1].to_owned())
            .collect()
    };
    assert_eq!(consumers(&redis), ["crashed-1", "crashed-2"]);

    let toml = format!(
        "[queue]\nredis_url = {url:?}\nkey_prefix = {prefix:?}\nlease = \"1s\"\npoll_interval = \"20ms\"\n\
         [delivery]\nallow_http = true\nallow_private_networks = true\ntimeout = \"400ms\"\n{}",
        subscription("crm", &rx.url("crm"), r#"["coupon.*"]"#, ""),
        url = redis.url(),
    );
    let hookd = support::daemon::Hookd::start(Config::from_toml(&toml).unwrap()).await;
    let arrivals = rx.wait_for(WAIT, "the entry crashed-2 held", |a| !a.is_empty()).await;
    assert_eq!(arrivals[0].id, "evt_held");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let now = consumers(&redis);
        if now.len() == 1 && !now[0].starts_with("crashed") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "crashed consumers left: {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    hookd.stop().await;
    assert_eq!(
        consumers(&redis),
        Vec::<String>::new(),
        "a clean stop removes its own name"
    );
}

/// Claims of a subscription at its in-flight cap wait in the process that
/// claimed them, in order, each started as the one before finishes; at
/// a stop, those still waiting go straight back to the queue, due at once
/// (not left leased until the lease runs out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_held_for_a_full_subscription_go_in_order_and_back_at_a_stop() {
    let rx = Receiver::start_with(|_, _, _| Answer::Slow(Duration::from_millis(300))).await;
    let redis = RedisServer::start();
    let prefix = support::unique_prefix("hold");
    let toml = format!(
        "[queue]\nredis_url = {url:?}\nkey_prefix = {prefix:?}\npoll_interval = \"20ms\"\n\
         [delivery]\nallow_http = true\nallow_private_networks = true\n{}",
        subscription("slow", &rx.url("slow"), r#"["order.*"]"#, "max_in_flight = 1"),
        url = redis.url(),
    );
    let config = Config::from_toml(&toml).unwrap();
    let hookd = support::daemon::Hookd::start(config.clone()).await;
    for n in 0..8 {
        hookd
            .send(json!({"type": "order.placed", "id": format!("evt_hold_{n}"), "data": {}}))
            .await;
    }
    let first = rx.wait_for(WAIT, "three deliveries", |a| a.len() >= 3).await;
    hookd.stop().await;
    let delivered: Vec<String> = rx.arrivals().iter().map(|a| a.id.clone()).collect();
    assert_eq!(
        delivered,
        (0..delivered.len())
            .map(|n| format!("evt_hold_{n}"))
            .collect::<Vec<_>>(),
        "one at a time, in order"
    );
    assert!(first.len() >= 3 && delivered.len() < 8, "{delivered:?}");

    let queue = hookd::queue::redis::RedisQueue::connect(&config.queue).await.unwrap();
    let depth = hookd::queue::Queue::depth(&queue, hookd::queue::now_ms())
        .await
        .unwrap();
    assert_eq!(
        (depth.due, depth.scheduled),
        (8 - delivered.len() as u64, 0),
        "the held claims are due again at once"
    );
}
