//! A Redis deployment with its delivery log in PostgreSQL, end to end:
//! real Redis, real PostgreSQL, a real receiver verifying signatures. The
//! log is read back through the admin API; Redis keeps only the hot
//! queue; PostgreSQL stopped mid-run does not stop deliveries, and the log
//! catches up once it is back, within a run and across a restart.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use hookd::config::Config;
use serde_json::{json, Value};
use support::daemon::Hookd;
use support::postgres::PostgresServer;
use support::receiver::{Receiver, SECRET};
use support::RedisServer;

const WAIT: Duration = Duration::from_secs(30);

/// Redis, PostgreSQL and a receiver for one test.
struct World {
    redis: RedisServer,
    postgres: PostgresServer,
    receiver: Receiver,
    prefix: String,
    dir: tempfile::TempDir,
}

impl World {
    async fn start(name: &str) -> World {
        World {
            redis: RedisServer::start(),
            postgres: PostgresServer::start(),
            receiver: Receiver::start().await,
            prefix: support::unique_prefix(name),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn config(&self) -> Config {
        let text = format!(
            "[server]\napi_keys = [\"test-key\"]\n\
             [queue]\nredis_url = \"{}\"\nkey_prefix = \"{}\"\ndata_dir = {:?}\npoll_interval = \"20ms\"\n\
             [history]\npostgres_url = \"{}\"\n\
             [plans.default]\nallow_http = true\nallow_private_networks = true\n[delivery]\nallow_http = true\nallow_private_networks = true\n\
             [[subscriptions]]\nname = \"clicks\"\nurl = \"{}\"\nevents = [\"link.clicked\"]\nsecrets = [\"{SECRET}\"]\n",
            self.redis.url(),
            self.prefix,
            self.dir.path().display().to_string(),
            self.postgres.url(),
            self.receiver.url("clicks"),
        );
        Config::from_toml(&text).unwrap_or_else(|e| panic!("test config: {e}\n{text}"))
    }

    /// Waits until the receiver has a verified delivery of each of `ids`.
    async fn delivered(&self, ids: &[String]) {
        let want: HashSet<&str> = ids.iter().map(String::as_str).collect();
        self.receiver
            .wait_for(WAIT, "every event delivered", |arrivals| {
                let got: HashSet<&str> = arrivals.iter().filter(|a| a.verified).map(|a| a.id.as_str()).collect();
                want.is_subset(&got)
            })
            .await;
    }
}

/// Posts `n` link clicks named `<tag>_<i>`; returns their ids.
async fn send(hookd: &Hookd, tag: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("evt_{tag}_{i}");
        let answer = hookd
            .send(json!({"id": id, "type": "link.clicked", "data": {"link": i}}))
            .await;
        assert_eq!(answer["id"], id.as_str(), "{answer}");
        ids.push(id);
    }
    ids
}

/// The delivered deliveries the log lists, by event id.
async fn logged(hookd: &Hookd) -> HashSet<String> {
    let mut out = HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => "/v1/deliveries?state=delivered&limit=100".to_owned(),
            Some(c) => format!("/v1/deliveries?state=delivered&limit=100&cursor={c}"),
        };
        let page = match hookd.api.get(&path).await {
            Ok(page) => page,
            Err(e) => {
                eprintln!("GET {path}: {e}");
                return out;
            }
        };
        for item in page["deliveries"].as_array().into_iter().flatten() {
            out.insert(item["event_id"].as_str().unwrap_or_default().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

/// Waits until the log lists every one of `ids` as delivered.
async fn wait_logged(hookd: &Hookd, ids: &[String]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = logged(hookd).await;
        let missing: Vec<&String> = ids.iter().filter(|id| !got.contains(*id)).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} never reached the log, e.g. {:?}",
            missing.len(),
            ids.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn readyz(hookd: &Hookd) -> Value {
    hookd.api.get("/readyz").await.expect("/readyz answers")
}

/// A metric's value from `/metrics` (read with the admin key).
async fn metric(hookd: &Hookd, name: &str) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = hookd.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect to hookd");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nauthorization: Bearer test-key\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_in_postgres_and_redis_keeps_only_the_hot_queue() {
    let world = World::start("pglog").await;
    let hookd = Hookd::start(world.config()).await;
    let ids = send(&hookd, "hot", 20).await;
    world.delivered(&ids).await;
    wait_logged(&hookd, &ids).await;

    // Each delivery reads back from PostgreSQL with its attempt, its
    // event with its body.
    let page = hookd.api.get("/v1/deliveries?state=delivered&limit=1").await.unwrap();
    let id = page["deliveries"][0]["id"].as_str().unwrap().to_owned();
    let one = hookd.api.get(&format!("/v1/deliveries/{id}/attempts")).await.unwrap();
    assert_eq!(one["attempts"].as_array().map(Vec::len), Some(1), "{one}");
    assert_eq!(one["attempts"][0]["status"], 204, "{one}");
    let event = one["delivery"]["event_id"].as_str().unwrap().to_owned();
    let record = hookd.api.get(&format!("/v1/events/{event}")).await.unwrap();
    assert_eq!(record["deliveries"].as_array().map(Vec::len), Some(1), "{record}");
    let rows = world
        .postgres
        .sql("SELECT count(*) FROM deliveries WHERE state = 'delivered'");
    assert_eq!(rows, "20");
    assert_eq!(world.postgres.sql("SELECT count(*) FROM events"), "20");
    assert_eq!(hookd.api.get("/readyz").await.unwrap()["log"]["state"], "ok");

    // Redis holds no log: a delivered delivery leaves nothing but its
    // event's dedup key.
    let keys = world.redis.command(&["KEYS", &format!("{}*", world.prefix)]);
    let log_keys: Vec<&str> = keys
        .lines()
        .filter(|k| k.contains(":history") || k.contains(":log") || k.contains(":event:"))
        .collect();
    assert!(log_keys.is_empty(), "log keys in Redis: {log_keys:?}");
    let dedup = keys.lines().filter(|k| k.contains(":seen:")).count();
    let other: Vec<&str> = keys.lines().filter(|k| !k.contains(":seen:")).collect();
    assert_eq!(dedup, 20, "one dedup key per event: {keys}");
    // Besides them: the subscription's state, the subscription list, the
    // data-loss marker and the (empty) ingest stream. No queue key is
    // left once everything is delivered.
    let fixed = [":sub:clicks", ":subscriptions", ":epoch", ":events"];
    for key in &other {
        assert!(fixed.iter().any(|f| key.ends_with(f)), "{key} left in Redis: {other:?}");
    }
    hookd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_go_on_while_postgres_is_down_and_the_log_catches_up() {
    let mut world = World::start("pgdown").await;
    let hookd = Hookd::start(world.config()).await;
    let before = send(&hookd, "before", 10).await;
    world.delivered(&before).await;
    wait_logged(&hookd, &before).await;

    world.postgres.stop();
    let during = send(&hookd, "during", 30).await;
    world.delivered(&during).await;
    // The log says it is degraded; deliveries did not wait for it.
    let deadline = Instant::now() + WAIT;
    let ready = loop {
        let ready = readyz(&hookd).await;
        if ready["status"] == "degraded" && ready["log"]["spooled"].as_u64().unwrap_or(0) > 0 {
            break ready;
        }
        assert!(Instant::now() < deadline, "never degraded: {ready}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ready["log"]["state"], "degraded", "{ready}");
    assert!(ready["log"]["error"].as_str().is_some(), "{ready}");
    // Without a key: the same states and counts, no error text (it names
    // PostgreSQL's address).
    let anyone = hookd::api::client::ApiClient::new(&hookd.url, None)
        .get("/readyz")
        .await
        .expect("/readyz answers without a key");
    assert_eq!(anyone["status"], "degraded", "{anyone}");
    assert_eq!(anyone["log"]["state"], "degraded", "{anyone}");
    assert!(anyone["log"]["spooled"].as_u64().is_some(), "{anyone}");
    assert!(anyone["log"].get("error").is_none(), "{anyone}");
    let shown = anyone.to_string();
    assert!(
        !shown.contains("127.0.0.1") && !shown.contains(&world.postgres.port().to_string()),
        "{anyone}"
    );
    assert_eq!(metric(&hookd, "hookd_history_degraded").await, 1.0);
    assert!(metric(&hookd, "hookd_history_spooled_entries").await > 0.0);

    world.postgres.start_again();
    let all: Vec<String> = before.iter().chain(&during).cloned().collect();
    wait_logged(&hookd, &all).await;
    let ready = readyz(&hookd).await;
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["log"]["spooled"], 0, "{ready}");
    assert_eq!(ready["log"]["dropped"], 0, "nothing lost: {ready}");
    assert_eq!(metric(&hookd, "hookd_history_dropped_total").await, 0.0);
    assert_eq!(metric(&hookd, "hookd_history_degraded").await, 0.0);
    // Each delivered once, logged once with one attempt.
    assert_eq!(
        world
            .postgres
            .sql("SELECT count(*) FROM deliveries WHERE state = 'delivered'"),
        "40"
    );
    assert_eq!(
        world.postgres.sql("SELECT count(*) FROM events"),
        "40",
        "every event record kept"
    );
    hookd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_an_outage_keeps_the_spool_for_the_next_start() {
    let mut world = World::start("pgspool").await;
    let hookd = Hookd::start(world.config()).await;
    let warm = send(&hookd, "warm", 3).await;
    world.delivered(&warm).await;
    wait_logged(&hookd, &warm).await;
    world.postgres.stop();
    let during = send(&hookd, "spooled", 15).await;
    world.delivered(&during).await;
    hookd.stop().await;
    let spool = world.dir.path().join(hookd::history::spool::DIR_NAME);
    let files: Vec<_> = walk(&spool).into_iter().filter(|p| p.ends_with(".jsonl")).collect();
    assert!(
        !files.is_empty(),
        "the waiting entries are on disk under {}",
        spool.display()
    );

    world.postgres.start_again();
    let hookd = Hookd::start(world.config()).await;
    let all: Vec<String> = warm.iter().chain(&during).cloned().collect();
    wait_logged(&hookd, &all).await;
    let files: Vec<_> = walk(&spool).into_iter().filter(|p| p.ends_with(".jsonl")).collect();
    assert!(files.is_empty(), "a written spool is removed: {files:?}");
    hookd.stop().await;
}

/// Every file under `dir`, as text paths.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path.display().to_string());
        }
    }
    out
}

/// A subscription made while the log store is down is made, and its
/// answer carries its secret (shown this once), which signs what it gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_made_while_postgresql_is_down_gets_its_secret() {
    let mut world = World::start("pg_down_create").await;
    let hookd = Hookd::start(world.config()).await;
    hookd
        .api
        .post("/v1/tenants", json!({"id": "acme", "name": "Acme"}).to_string())
        .await
        .unwrap();
    world.postgres.stop();
    let made = hookd
        .api
        .post(
            "/v1/subscriptions",
            json!({"tenant": "acme", "name": "new", "url": world.receiver.url("new"), "events": ["*"]}).to_string(),
        )
        .await
        .expect("made while the log store is down");
    let secret = made["secret"].as_str().expect("the secret is shown on creation");
    world.receiver.trust("new", &[secret]);
    hookd
        .send(json!({"type": "link.clicked", "tenant": "acme", "data": {}}))
        .await;
    world
        .receiver
        .wait_for(WAIT, "a verified delivery to the new subscription", |a| {
            a.iter().any(|x| x.path == "new" && x.verified)
        })
        .await;
    world.postgres.start_again();
    hookd.stop().await;
}
