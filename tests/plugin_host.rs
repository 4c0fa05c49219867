//! The plugin host against real plugins: the example plugins' outputs, and
//! the hostile ones contained. The plugins are built once per run by
//! `plugins/build.sh` when `plugins/dist` is missing or older than their
//! sources.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hookd::config::{ByteSize, Config, PluginConfig, PluginsConfig};
use hookd::plugin::{run_once, Error, Input, Plugin, Plugins, Verdict};
use serde_json::{json, Value};
use support::plugins::{shared_cache, wasm};

fn settings(cache_dir: &Path) -> PluginsConfig {
    let mut s = Config::from_toml("").expect("defaults are valid").plugins;
    s.cache_dir = cache_dir.to_owned();
    s.max_instances = 16;
    // Generous: these tests check behaviour, not speed, on a busy machine.
    s.deadline = Duration::from_secs(2);
    s
}

fn plugin_config(name: &str, config: &[(&str, &str)]) -> PluginConfig {
    PluginConfig {
        path: wasm(name),
        config: config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        deadline: None,
        memory_limit: None,
        fresh_instance: None,
    }
}

fn load(name: &str, config: &[(&str, &str)]) -> Plugin {
    let plugins = Plugins::new(&settings(&shared_cache())).expect("engine starts");
    plugins.load("crm", &plugin_config(name, config)).expect("plugin loads")
}

/// The input hookd builds for an event of `event_type` with `data`.
fn input(event_type: &str, data: Value) -> Input {
    let json = json!({"type": event_type, "id": "evt_1", "data": data, "timestamp": "2026-11-23T10:00:00Z"});
    let event =
        hookd::ingest::parse_event(json.to_string().as_bytes(), hookd::ingest::DEFAULT_MAX_DEPTH).expect("valid event");
    Input {
        event_id: event.id.to_string(),
        event_type: event.event_type.clone(),
        timestamp: event.occurred_at.timestamp_millis(),
        body: event.body(),
        headers: vec![("content-type".into(), "application/json".into())],
    }
}

fn new_body(verdict: &Verdict) -> Value {
    match verdict {
        Verdict::Deliver { body: Some(body), .. } => serde_json::from_slice(body).expect("the new body is JSON"),
        other => panic!("expected a new body, got {other:?}"),
    }
}

fn unchanged() -> Verdict {
    Verdict::Deliver {
        body: None,
        set_headers: vec![],
        remove_headers: vec![],
    }
}

#[tokio::test]
async fn coupon_filter_drops_under_and_keeps_at_or_over_min_amount() {
    let plugin = load("coupon-filter", &[("min_amount", "10")]);
    let verdict = plugin
        .transform(input("coupon.redeemed", json!({"amount": 9.5})))
        .await
        .unwrap();
    assert_eq!(
        verdict,
        Verdict::Drop {
            reason: "amount 9.5 is under min_amount 10".into()
        }
    );
    for amount in [10, 250] {
        let verdict = plugin
            .transform(input("coupon.redeemed", json!({"amount": amount})))
            .await
            .unwrap();
        assert_eq!(verdict, unchanged(), "amount {amount}");
    }
    let other = plugin.transform(input("link.clicked", json!({}))).await.unwrap();
    assert_eq!(other, unchanged(), "other event types pass");
    let err = plugin
        .transform(input("coupon.redeemed", json!({"code": "X"})))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Guest { plugin, message } if plugin == "crm" && message.contains("data.amount")),
        "{err}"
    );
}

#[tokio::test]
async fn redactor_masks_and_removes_nested_fields() {
    let data = json!({"email": "a@b.c", "customer": {"email": "x@y.z", "phone": "+1", "name": "Ann"}, "amount": 3});
    let mask = load("redactor", &[("fields", "email, customer.phone,missing.path")]);
    let verdict = mask.transform(input("user.created", data.clone())).await.unwrap();
    assert_eq!(
        new_body(&verdict),
        json!({
            "type": "user.created",
            "timestamp": "2026-11-23T10:00:00.000Z",
            "data": {"email": "[redacted]", "customer": {"email": "x@y.z", "phone": "[redacted]", "name": "Ann"}, "amount": 3}
        })
    );
    let remove = load("redactor", &[("fields", "customer.email,amount"), ("mode", "remove")]);
    let verdict = remove.transform(input("user.created", data)).await.unwrap();
    assert_eq!(
        new_body(&verdict)["data"],
        json!({"email": "a@b.c", "customer": {"phone": "+1", "name": "Ann"}})
    );
    let none = mask
        .transform(input("user.created", json!({"other": 1})))
        .await
        .unwrap();
    assert_eq!(none, unchanged(), "nothing to redact: body untouched");
    let bad = load("redactor", &[("fields", "email"), ("mode", "shred")]);
    let err = bad.transform(input("user.created", json!({}))).await.unwrap_err();
    assert!(err.to_string().contains("use \"mask\" or \"remove\""), "{err}");
}

#[tokio::test]
async fn slack_reshapes_into_an_incoming_webhook_message() {
    let plugin = load("slack", &[("title", "Coupon redeemed"), ("fields", "coupon,amount")]);
    let verdict = plugin
        .transform(input(
            "coupon.redeemed",
            json!({"coupon": "SPRING", "amount": 12, "store": "x"}),
        ))
        .await
        .unwrap();
    assert_eq!(
        new_body(&verdict),
        json!({
            "text": "Coupon redeemed: coupon: SPRING, amount: 12",
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": "Coupon redeemed"}},
                {"type": "section", "fields": [
                    {"type": "mrkdwn", "text": "*coupon*\nSPRING"},
                    {"type": "mrkdwn", "text": "*amount*\n12"}
                ]},
                {"type": "context", "elements": [{"type": "mrkdwn", "text": "`evt_1` at 2026-11-23T10:00:00.000Z"}]}
            ]
        })
    );
}

const JQ_FILTER: &str = "select(.data.amount >= 10) | {id: .data.coupon, total: .data.amount}";

#[tokio::test]
async fn jq_reshapes_and_drops() {
    let plugin = load("jq", &[("filter", JQ_FILTER)]);
    let verdict = plugin
        .transform(input("coupon.redeemed", json!({"coupon": "SPRING", "amount": 12})))
        .await
        .unwrap();
    assert_eq!(
        verdict,
        Verdict::Deliver {
            body: Some(Bytes::from_static(br#"{"id":"SPRING","total":12}"#)),
            set_headers: vec![],
            remove_headers: vec![],
        }
    );
    let dropped = plugin
        .transform(input("coupon.redeemed", json!({"coupon": "SPRING", "amount": 9})))
        .await
        .unwrap();
    assert!(matches!(dropped, Verdict::Drop { .. }), "{dropped:?}");

    let meta = load(
        "jq",
        &[("filter", "{id: $event.id, type: $event.type, at: $event.timestamp}")],
    );
    let verdict = meta.transform(input("a.b", json!({}))).await.unwrap();
    assert_eq!(
        new_body(&verdict),
        json!({"id": "evt_1", "type": "a.b", "at": 1795428000000_i64})
    );
}

#[tokio::test]
async fn reshape_in_rust_matches_the_jq_example() {
    let jq = load("jq", &[("filter", JQ_FILTER)]);
    let rust = load("reshape", &[]);
    for data in [
        json!({"coupon": "SPRING", "amount": 12}),
        json!({"coupon": "SPRING", "amount": 10.5}),
        json!({"coupon": null, "amount": 99}),
    ] {
        let want = jq.transform(input("coupon.redeemed", data.clone())).await.unwrap();
        let got = rust.transform(input("coupon.redeemed", data.clone())).await.unwrap();
        assert_eq!(got, want, "{data}");
    }
    let small = rust
        .transform(input("coupon.redeemed", json!({"amount": 9})))
        .await
        .unwrap();
    assert!(matches!(small, Verdict::Drop { .. }), "{small:?}");
}

#[tokio::test]
async fn jq_errors_are_clear() {
    let cases: &[(&str, &str)] = &[
        ("{id: .data.coupon", "the jq filter does not parse"),
        ("nosuchfn(.)", "undefined filter `nosuchfn`"),
        (".data.list[]", "more than one output"),
        (".data.coupon | error(\"no coupons today\")", "no coupons today"),
    ];
    for (filter, want) in cases {
        let plugin = load("jq", &[("filter", filter)]);
        let err = plugin
            .transform(input("a.b", json!({"coupon": "X", "list": [1, 2]})))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Guest { message, .. } if message.contains(want)),
            "{filter}: {err}"
        );
    }
    let missing = load("jq", &[]);
    let err = missing.transform(input("a.b", json!({}))).await.unwrap_err();
    assert!(err.to_string().contains("config key `filter` is missing"), "{err}");
}

/// Runs on a single-threaded runtime on purpose: the good call can only
/// finish while the loop runs if the looping guest yields.
#[tokio::test]
async fn an_endless_loop_hits_the_deadline_without_stalling_other_calls() {
    let plugins = Plugins::new(&settings(&shared_cache())).unwrap();
    let mut looping = plugin_config("hostile-endless-loop", &[]);
    looping.deadline = Some(Duration::from_millis(50));
    let looping = plugins.load("looper", &looping).unwrap();
    let good = plugins.load("good", &plugin_config("coupon-filter", &[])).unwrap();

    let (stuck, fine) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(looping.transform(input("a.b", json!({}))), async {
            // Start once the loop is surely running.
            tokio::task::yield_now().await;
            good.transform(input("coupon.redeemed", json!({"amount": 1}))).await
        })
    })
    .await
    .expect("neither call hangs");
    let err = stuck.unwrap_err();
    assert!(
        matches!(&err, Error::Deadline { plugin, limit } if plugin == "looper" && *limit == Duration::from_millis(50)),
        "{err}"
    );
    assert!(err.to_string().contains("deadline exceeded after 50 ms"), "{err}");
    assert_eq!(fine.unwrap(), unchanged());

    // The instance was discarded; the plugin still answers (and still loops).
    let again = looping.transform(input("a.b", json!({}))).await.unwrap_err();
    assert!(matches!(again, Error::Deadline { .. }), "{again}");
}

#[tokio::test]
async fn a_memory_bomb_hits_the_memory_limit() {
    let plugins = Plugins::new(&settings(&shared_cache())).unwrap();
    let mut cfg = plugin_config("hostile-memory-bomb", &[]);
    cfg.memory_limit = Some(ByteSize(16 << 20));
    let bomb = plugins.load("bomb", &cfg).unwrap();
    let err = tokio::time::timeout(Duration::from_secs(30), bomb.transform(input("a.b", json!({}))))
        .await
        .expect("does not hang")
        .unwrap_err();
    assert!(
        matches!(&err, Error::Memory { plugin, limit } if plugin == "bomb" && *limit == 16 << 20),
        "{err}"
    );
    assert!(err.to_string().contains("memory limit of 16MiB exceeded"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_plugin_is_stopped_at_its_deadline_in_wall_time() {
    // One call slot (two instances, half of them for idle warm ones).
    let mut s = settings(&shared_cache());
    s.max_instances = 2;
    s.queue_timeout = Duration::from_secs(30);
    let plugins = Plugins::new(&s).unwrap();
    let deadline = Duration::from_millis(1500);
    let mut cfg = plugin_config("hostile-sleep", &[]);
    cfg.deadline = Some(deadline);
    let sleeper = plugins.load("sleeper", &cfg).unwrap();
    // Another tenant's plugin, whose deadline is shorter than the sleeper
    // holds the slot.
    let mut cfg = plugin_config("coupon-filter", &[]);
    cfg.deadline = Some(Duration::from_secs(1));
    let good = plugins.load("good", &cfg).unwrap();

    let started = Instant::now();
    let (slow, queued) = tokio::time::timeout(Duration::from_secs(60), async {
        // The sleeper takes the slot on its first poll; the good call
        // waits for it.
        tokio::join!(
            sleeper.transform(input("a.b", json!({}))),
            good.transform(input("coupon.redeemed", json!({"amount": 1})))
        )
    })
    .await
    .expect("a plugin blocked in a WASI sleep is cut off (it sleeps an hour)");
    let err = slow.unwrap_err();
    assert!(
        matches!(&err, Error::Deadline { plugin, limit } if plugin == "sleeper" && *limit == deadline),
        "{err}"
    );
    assert!(err.is_transient(), "a deadline is retried");
    assert!(started.elapsed() >= deadline, "{:?}", started.elapsed());
    // The wait for the slot is not the good call's deadline: it runs in
    // full once the sleeper is stopped.
    assert_eq!(queued.unwrap(), unchanged());

    // The slot is free again and the timed-out instance was discarded.
    let again = tokio::time::timeout(Duration::from_secs(60), sleeper.transform(input("a.b", json!({}))))
        .await
        .expect("cut off again");
    assert!(matches!(again, Err(Error::Deadline { .. })), "{again:?}");
}

/// A call that finds no free slot within `plugins.queue_timeout` gives up
/// without running, as a transient failure; the slots' holders are not
/// disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_finds_no_slot_gives_up_at_the_queue_timeout() {
    let mut s = settings(&shared_cache());
    s.max_instances = 2;
    s.queue_timeout = Duration::from_millis(100);
    let plugins = Plugins::new(&s).unwrap();
    let mut cfg = plugin_config("hostile-sleep", &[]);
    cfg.deadline = Some(Duration::from_secs(2));
    let sleeper = plugins.load("sleeper", &cfg).unwrap();
    let good = plugins.load("good", &plugin_config("coupon-filter", &[])).unwrap();
    let (slow, queued) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(
            sleeper.transform(input("a.b", json!({}))),
            good.transform(input("coupon.redeemed", json!({"amount": 1})))
        )
    })
    .await
    .expect("both calls end");
    let busy = queued.unwrap_err();
    assert!(
        matches!(&busy, Error::Busy { plugin, waited } if plugin == "good" && *waited == Duration::from_millis(100)),
        "{busy}"
    );
    assert!(busy.is_transient(), "no slot is retried");
    assert!(busy.to_string().contains("plugins.queue_timeout"), "{busy}");
    assert!(matches!(slow, Err(Error::Deadline { .. })), "{slow:?}");
    // With the slot free, the same call goes through.
    assert_eq!(
        good.transform(input("coupon.redeemed", json!({"amount": 1})))
            .await
            .unwrap(),
        unchanged()
    );
}

#[tokio::test]
async fn idle_warm_instances_keep_only_so_much_memory() {
    let mut s = settings(&shared_cache());
    s.warm_memory = ByteSize(24 << 20);
    let plugins = Plugins::new(&s).unwrap();
    let small = plugins
        .load("small", &plugin_config("hostile-memory-bomb", &[("keep_mib", "0")]))
        .unwrap();
    assert_eq!(
        instance_calls(&small.transform(input("a.b", json!({}))).await.unwrap()),
        1
    );
    assert_eq!(
        instance_calls(&small.transform(input("a.b", json!({}))).await.unwrap()),
        2,
        "a small instance is kept warm"
    );
    // An instance that grew to ~30 MiB would push what idle instances hold
    // past 24 MiB: it is dropped after its call, not kept.
    let big = plugins
        .load("big", &plugin_config("hostile-memory-bomb", &[("keep_mib", "30")]))
        .unwrap();
    assert_eq!(
        instance_calls(&big.transform(input("a.b", json!({}))).await.unwrap()),
        1
    );
    assert_eq!(
        instance_calls(&big.transform(input("a.b", json!({}))).await.unwrap()),
        1,
        "the grown instance was not kept warm"
    );
    // The small one is still warm.
    assert_eq!(
        instance_calls(&small.transform(input("a.b", json!({}))).await.unwrap()),
        3
    );
}

#[test]
fn a_cache_directory_others_may_write_is_not_trusted() {
    use std::os::unix::fs::PermissionsExt as _;

    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let cfg = plugin_config("coupon-filter", &[]);
    let first = Plugins::new(&settings(&cache)).unwrap().load("crm", &cfg).unwrap();
    assert!(first.info().artifact.is_some());
    let mode = std::fs::metadata(&cache).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "created private: {mode:o}");

    // Anyone may now plant native code there: hookd must not map it.
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let second = Plugins::new(&settings(&cache)).unwrap().load("crm", &cfg).unwrap();
    assert!(
        !second.info().from_cache,
        "an artifact from a world-writable directory was loaded"
    );
    assert!(second.info().artifact.is_none());

    // A private directory with an artifact others may write is not trusted either.
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).unwrap();
    let artifact = first.info().artifact.clone().unwrap();
    std::fs::set_permissions(&artifact, std::fs::Permissions::from_mode(0o666)).unwrap();
    let third = Plugins::new(&settings(&cache)).unwrap().load("crm", &cfg).unwrap();
    assert!(!third.info().from_cache, "a world-writable artifact was loaded");
}

fn instance_calls(verdict: &Verdict) -> u64 {
    match verdict {
        Verdict::Deliver { set_headers, .. } => set_headers
            .iter()
            .find(|(n, _)| n == "x-instance-calls")
            .and_then(|(_, v)| v.parse().ok())
            .expect("x-instance-calls header"),
        other => panic!("expected deliver, got {other:?}"),
    }
}

#[tokio::test]
async fn a_panic_is_a_trap_and_the_next_call_gets_a_fresh_instance() {
    let plugin = load("hostile-panic", &[]);
    let ok = input("a.b", json!({}));
    assert_eq!(instance_calls(&plugin.transform(ok.clone()).await.unwrap()), 1);
    assert_eq!(
        instance_calls(&plugin.transform(ok.clone()).await.unwrap()),
        2,
        "warm instance reused"
    );

    // The plugin's own error keeps the instance.
    let err = plugin.transform(input("test.fail", json!({}))).await.unwrap_err();
    assert!(
        matches!(&err, Error::Guest { message, .. } if message == "refusing event evt_1"),
        "{err}"
    );
    assert_eq!(instance_calls(&plugin.transform(ok.clone()).await.unwrap()), 4);

    let err = plugin.transform(input("test.panic", json!({}))).await.unwrap_err();
    assert!(
        matches!(&err, Error::Trap { plugin, message } if plugin == "crm" && message.contains("told to panic by event evt_1")),
        "{err}"
    );
    assert_eq!(
        instance_calls(&plugin.transform(ok).await.unwrap()),
        1,
        "the trapped instance was replaced"
    );
}

#[tokio::test]
async fn fresh_instance_starts_every_call_anew() {
    let plugins = Plugins::new(&settings(&shared_cache())).unwrap();
    let mut cfg = plugin_config("hostile-panic", &[]);
    cfg.fresh_instance = Some(true);
    let plugin = plugins.load("fresh", &cfg).unwrap();
    for _ in 0..3 {
        assert_eq!(
            instance_calls(&plugin.transform(input("a.b", json!({}))).await.unwrap()),
            1
        );
    }
    assert!(plugin.info().fresh_instance);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_each_get_an_instance() {
    let plugin = load("hostile-panic", &[]);
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let plugin = plugin.clone();
        calls.spawn(async move { plugin.transform(input("a.b", json!({}))).await });
    }
    while let Some(done) = calls.join_next().await {
        assert!(instance_calls(&done.unwrap().unwrap()) >= 1);
    }
}

#[tokio::test]
async fn protected_headers_are_refused() {
    let set = load("hostile-protected-header", &[]);
    let err = set.transform(input("a.b", json!({}))).await.unwrap_err();
    assert!(
        matches!(&err, Error::ProtectedHeader { plugin, header } if plugin == "crm" && header == "webhook-signature"),
        "{err}"
    );
    let remove = load("hostile-protected-header", &[("remove", "true")]);
    let err = remove.transform(input("a.b", json!({}))).await.unwrap_err();
    assert!(
        matches!(&err, Error::ProtectedHeader { header, .. } if header == "webhook-id"),
        "{err}"
    );
}

#[tokio::test]
async fn garbage_output_is_refused() {
    let name = load("hostile-garbage", &[]);
    let err = name.transform(input("a.b", json!({}))).await.unwrap_err();
    assert!(
        matches!(&err, Error::BadOutput { problem, .. } if problem.contains("not a valid header name")),
        "{err}"
    );
    let value = load("hostile-garbage", &[("value", "true")]);
    let err = value.transform(input("a.b", json!({}))).await.unwrap_err();
    assert!(
        matches!(&err, Error::BadOutput { problem, .. } if problem.contains("not a valid header value")),
        "{err}"
    );
}

#[test]
fn load_errors_name_the_subscription_and_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let core_module = dir.path().join("core.wasm");
    std::fs::write(&core_module, b"\0asm\x01\0\0\0").unwrap();
    let text = dir.path().join("notes.wasm");
    std::fs::write(&text, b"hello, this is not wasm").unwrap();
    let plugins = Plugins::new(&settings(&dir.path().join("cache"))).unwrap();
    let cases: &[(PathBuf, &str)] = &[
        (dir.path().join("missing.wasm"), "cannot read"),
        (core_module, "core WebAssembly module, not a component"),
        (text, "not a WebAssembly file"),
        (
            wasm("hostile-wrong-world"),
            "must implement the world hookd:plugin/transformer",
        ),
    ];
    for (path, want) in cases {
        let cfg = PluginConfig {
            path: path.clone(),
            config: Default::default(),
            deadline: None,
            memory_limit: None,
            fresh_instance: None,
        };
        let err = plugins.load("billing", &cfg).err().expect("load fails");
        assert!(matches!(err, Error::Load { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("subscription `billing`"), "{msg}");
        assert!(msg.contains(want), "{}: {msg}", path.display());
    }
}

#[test]
fn compiled_plugins_are_cached_on_disk_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let cfg = plugin_config("coupon-filter", &[]);

    let first = Plugins::new(&settings(&cache)).unwrap().load("crm", &cfg).unwrap();
    assert!(!first.info().from_cache, "nothing cached yet");
    let artifact = first.info().artifact.clone().expect("the artifact was written");
    assert!(artifact.is_file());
    assert!(artifact.starts_with(&cache));
    assert_eq!(
        std::fs::read_dir(&cache).unwrap().count(),
        1,
        "one file, no temporaries left"
    );

    // A second engine (a restart) maps the artifact instead of compiling.
    let second = Plugins::new(&settings(&cache)).unwrap().load("crm", &cfg).unwrap();
    assert!(second.info().from_cache);
    assert_eq!(second.info().artifact.as_ref(), Some(&artifact));
    assert_eq!(second.info().digest, first.info().digest);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let verdict = rt
        .block_on(second.transform(input("coupon.redeemed", json!({"amount": 1}))))
        .unwrap();
    assert_eq!(verdict, unchanged());

    // A corrupt artifact costs a compilation, not the load. (Replaced, not
    // rewritten in place: the live plugins map the file.)
    drop((first, second));
    let corrupt = dir.path().join("corrupt");
    std::fs::write(&corrupt, b"garbage").unwrap();
    std::fs::rename(&corrupt, &artifact).unwrap();
    let third = Plugins::new(&settings(&cache)).unwrap().load("crm", &cfg).unwrap();
    assert!(!third.info().from_cache);
    assert!(std::fs::read(&artifact).unwrap().len() > 100, "rewritten");
}

#[test]
fn plugin_logs_reach_tracing_tagged_and_rate_limited() {
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let mut s = settings(&shared_cache());
        s.log_rate = 2;
        let plugin = Plugins::new(&s)
            .unwrap()
            .load("crm", &plugin_config("hostile-panic", &[]))
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for _ in 0..4 {
            rt.block_on(plugin.transform(input("a.b", json!({})))).unwrap();
        }
    });
    let logged = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = logged.lines().filter(|l| l.contains("hookd::plugin::guest")).collect();
    assert_eq!(lines.len(), 2, "two per second: {logged}");
    assert!(lines[0].contains("call 1"), "{}", lines[0]);
    assert!(
        lines[0].contains("subscription=\"crm\"") || lines[0].contains("subscription=crm"),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains("event_id=\"evt_1\"") || lines[0].contains("event_id=evt_1"),
        "{}",
        lines[0]
    );
}

#[tokio::test]
async fn run_once_reports_what_would_be_sent() {
    let event = br#"{"type":"coupon.redeemed","id":"evt_9","data":{"coupon":"SPRING","amount":12},"timestamp":"2026-11-23T10:00:00Z"}"#;
    let report = run_once(
        &settings(&shared_cache()),
        &wasm("jq"),
        event,
        vec![("filter".into(), JQ_FILTER.into())],
    )
    .await
    .unwrap();
    let (body, headers) = report.request.clone().expect("delivered");
    assert_eq!(&body[..], br#"{"id":"SPRING","total":12}"#);
    assert_eq!(
        headers,
        vec![("content-type".to_string(), "application/json".to_string())]
    );
    let text = report.render();
    assert!(text.contains("verdict:  deliver (new body)"), "{text}");
    assert!(text.contains(r#"{"id":"SPRING","total":12}"#), "{text}");
    assert!(text.contains("evt_9"), "{text}");

    let dropped = run_once(
        &settings(&shared_cache()),
        &wasm("coupon-filter"),
        event,
        vec![("min_amount".into(), "100".into())],
    )
    .await
    .unwrap();
    assert!(dropped.request.is_none());
    assert!(dropped
        .render()
        .contains("verdict:  drop: amount 12 is under min_amount 100"));

    let err = run_once(&settings(&shared_cache()), &wasm("jq"), b"{}", vec![])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Event { .. }), "{err}");
}
