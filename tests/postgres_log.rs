//! A Redis deployment with its delivery log in PostgreSQL, end to end:
//! real Redis, real PostgreSQL, a real receiver verifying signatures. The
//! log is read back through the admin API; Redis keeps only the hot
//! queue; PostgreSQL stopped mid-run does not stop deliveries, and the log
//! catches up once it is back, within a run and across a restart. TLS to
//! PostgreSQL (`history.postgres_tls`) against servers with certificates
//! of the tests' own CAs: verified, refused, required.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use hookd::config::Config;
use serde_json::{json, Value};
use support::daemon::Hookd;
use support::postgres::{PostgresServer, ServerTls, TestCa};
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
        World::with_postgres(name, PostgresServer::start()).await
    }

    async fn with_postgres(name: &str, postgres: PostgresServer) -> World {
        World {
            redis: RedisServer::start(),
            postgres,
            receiver: Receiver::start().await,
            prefix: support::unique_prefix(name),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn config(&self) -> Config {
        self.config_with(&self.postgres.url(), "")
    }

    /// The test's config with its log at `url`, and `history` (more
    /// `[history]` keys).
    fn config_with(&self, url: &str, history: &str) -> Config {
        let text = format!(
            "[server]\napi_keys = [\"test-key-00000001\"]\n\
             [queue]\nredis_url = \"{}\"\nkey_prefix = \"{}\"\ndata_dir = {:?}\npoll_interval = \"20ms\"\n\
             [history]\npostgres_url = \"{url}\"\n{history}\n\
             [plans.default]\nallow_http = true\nallow_private_networks = true\n[delivery]\nallow_http = true\nallow_private_networks = true\n\
             [[subscriptions]]\nname = \"clicks\"\nurl = \"{}\"\nevents = [\"link.clicked\"]\nsecrets = [\"{SECRET}\"]\n",
            self.redis.url(),
            self.prefix,
            self.dir.path().display().to_string(),
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
        .write_all(
            b"GET /metrics HTTP/1.1\r\nhost: x\r\nauthorization: Bearer test-key-00000001\r\nconnection: close\r\n\r\n",
        )
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
    // data-loss marker, the (empty) ingest stream and each shard's markers
    // that its dead deliveries are filed by scope and its due ones by
    // owner. No queue key is left once everything is delivered: no lane.
    let fixed = [
        ":sub:clicks",
        ":subscriptions",
        ":epoch",
        ":events",
        ":dead_by_filed",
        ":lanes_filed",
    ];
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

// TLS to PostgreSQL (`history.postgres_tls`, `history.postgres_ca_file`):
// servers with certificates of the test's own CAs, made with rcgen.

/// A password in the log's URL: the server trusts every connection, so
/// it is never asked for, but it must never be shown either.
const PG_PASSWORD: &str = "pg-pass-7";

/// The URL of `postgres` as `host`, with [`PG_PASSWORD`].
fn url_with_password(postgres: &PostgresServer, host: &str) -> String {
    format!(
        "postgres://{}:{PG_PASSWORD}@{host}:{}/postgres",
        support::postgres::USER,
        postgres.port()
    )
}

/// `[history]` keys for `verify-full` trusting the CA file `ca`.
fn verify_full(ca: &std::path::Path) -> String {
    format!(
        "postgres_tls = \"verify-full\"\npostgres_ca_file = {:?}\n",
        ca.display().to_string()
    )
}

/// hookd's connections to `postgres`: how many use TLS, how many not.
fn hookd_connections(postgres: &PostgresServer) -> (u64, u64) {
    let row = postgres.sql(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
         FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'hookd'",
    );
    let (tls, plain) = row.split_once('|').expect("two counts");
    (tls.parse().unwrap(), plain.parse().unwrap())
}

/// Sends `n` events and waits until they are delivered and logged, and
/// the attempt of one reads back through the API.
async fn delivered_and_logged(world: &World, hookd: &Hookd, tag: &str, n: usize) -> Vec<String> {
    let ids = send(hookd, tag, n).await;
    world.delivered(&ids).await;
    wait_logged(hookd, &ids).await;
    let page = hookd.api.get("/v1/deliveries?state=delivered&limit=1").await.unwrap();
    let id = page["deliveries"][0]["id"].as_str().unwrap().to_owned();
    let one = hookd.api.get(&format!("/v1/deliveries/{id}/attempts")).await.unwrap();
    assert_eq!(one["attempts"][0]["status"], 204, "{one}");
    ids
}

/// The error `history` gets connecting to PostgreSQL, as hookd reports it
/// at start.
async fn connect_error(history: &hookd::config::HistoryConfig) -> String {
    match hookd::history::postgres::PostgresHistory::connect(history).await {
        Ok(_) => panic!("connected"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_the_ca_file_keeps_the_log_over_tls() {
    let ca = TestCa::new("trusted");
    let world = World::with_postgres("pgtls_ok", PostgresServer::start_tls(ServerTls::signed_by(&ca).only())).await;
    let ca_file = ca.write(world.dir.path(), "pg-ca.pem");
    // By name: the certificate's `localhost` is checked against it.
    let config = world.config_with(&url_with_password(&world.postgres, "localhost"), &verify_full(&ca_file));
    let hookd = Hookd::start(config).await;
    delivered_and_logged(&world, &hookd, "tls", 5).await;
    assert_eq!(readyz(&hookd).await["log"]["state"], "ok");
    let (tls, plain) = hookd_connections(&world.postgres);
    assert!(
        tls > 0 && plain == 0,
        "hookd's connections: {tls} over TLS, {plain} plain"
    );
    hookd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_refuses_a_certificate_it_does_not_trust() {
    let ca = TestCa::new("server's");
    let other = TestCa::new("other");
    let world = World::with_postgres("pgtls_untrusted", PostgresServer::start_tls(ServerTls::signed_by(&ca))).await;
    let other_file = other.write(world.dir.path(), "other-ca.pem");
    let url = url_with_password(&world.postgres, "localhost");

    // Another CA: hookd does not start, and says why.
    let config = world.config_with(&url, &verify_full(&other_file));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let run = hookd::run(config, listener, tokio_util::sync::CancellationToken::new());
    let err = tokio::time::timeout(WAIT, run)
        .await
        .expect("hookd gives up at start")
        .expect_err("refused");
    let err = format!("{err:#}");
    assert!(
        err.contains("cannot open the delivery history")
            && err.contains("invalid peer certificate")
            && err.contains("UnknownIssuer")
            && err.contains("history.postgres_ca_file")
            && err.contains(&other_file.display().to_string()),
        "{err}"
    );
    assert!(!err.contains(PG_PASSWORD), "{err}");

    // No CA file: the system's roots do not hold the test's CA either.
    let config = world.config_with(&url, "postgres_tls = \"verify-full\"");
    let err = connect_error(&config.history).await;
    assert!(
        err.contains("certificate") && err.contains("system"),
        "refused, naming what it trusted: {err}"
    );

    // The right CA, but a certificate for another name.
    hookd_refuses_a_certificate_for_another_name(&ca, &world).await;
}

/// `verify-full` checks the host name: a certificate of a trusted CA for
/// `db.example` does not do for `127.0.0.1`.
async fn hookd_refuses_a_certificate_for_another_name(ca: &TestCa, world: &World) {
    let mut postgres = PostgresServer::start_tls(ServerTls::for_names(ca, &["db.example"]));
    let ca_file = ca.write(world.dir.path(), "pg-ca-named.pem");
    let config = world.config_with(&url_with_password(&postgres, "127.0.0.1"), &verify_full(&ca_file));
    let err = connect_error(&config.history).await;
    assert!(
        err.contains("invalid peer certificate") && err.contains("not valid for name"),
        "{err}"
    );
    postgres.stop();
}

/// A certificate that stops being trusted while hookd runs (the server's
/// renewed with another CA) is an outage of the log like any other:
/// deliveries go on, /readyz names the certificate problem, the entries
/// wait in the spool and reach the log once the certificate is right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_mid_run_is_reported_and_nothing_is_lost() {
    let ca = TestCa::new("trusted");
    let rogue = TestCa::new("rogue");
    let mut world = World::with_postgres(
        "pgtls_rotate",
        PostgresServer::start_tls(ServerTls::signed_by(&ca).only()),
    )
    .await;
    let ca_file = ca.write(world.dir.path(), "pg-ca.pem");
    let config = world.config_with(&url_with_password(&world.postgres, "127.0.0.1"), &verify_full(&ca_file));
    let hookd = Hookd::start(config).await;
    let before = delivered_and_logged(&world, &hookd, "before", 5).await;

    world.postgres.stop();
    world.postgres.serve_tls(&ServerTls::signed_by(&rogue).only());
    world.postgres.start_again();
    let during = send(&hookd, "during", 10).await;
    world.delivered(&during).await;
    let deadline = Instant::now() + WAIT;
    let ready = loop {
        let ready = readyz(&hookd).await;
        let error = ready["log"]["error"].as_str().unwrap_or_default();
        if ready["status"] == "degraded" && error.contains("invalid peer certificate") {
            break ready;
        }
        assert!(Instant::now() < deadline, "never reported the certificate: {ready}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        ready["log"]["error"].as_str().unwrap().contains("UnknownIssuer"),
        "{ready}"
    );
    assert!(!ready.to_string().contains(PG_PASSWORD), "{ready}");

    world.postgres.stop();
    world.postgres.serve_tls(&ServerTls::signed_by(&ca).only());
    world.postgres.start_again();
    let all: Vec<String> = before.iter().chain(&during).cloned().collect();
    wait_logged(&hookd, &all).await;
    let ready = readyz(&hookd).await;
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["log"]["dropped"], 0, "nothing lost: {ready}");
    assert_eq!(
        world
            .postgres
            .sql("SELECT count(*) FROM deliveries WHERE state = 'delivered'"),
        "15"
    );
    hookd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_is_refused_where_tls_is_required() {
    // The server accepts TLS only (`hostssl`): hookd's plain text is
    // refused by the server.
    let ca = TestCa::new("server's");
    let mut only_tls = PostgresServer::start_tls(ServerTls::signed_by(&ca).only());
    let config = Config::from_toml(&format!(
        "[history]\npostgres_url = \"{}\"\npostgres_tls = \"disable\"",
        url_with_password(&only_tls, "127.0.0.1")
    ))
    .unwrap();
    let err = connect_error(&config.history).await;
    assert!(
        err.contains("no pg_hba.conf entry") && err.contains("no encryption"),
        "{err}"
    );
    assert!(!err.contains(PG_PASSWORD), "{err}");
    only_tls.stop();

    // hookd requires TLS and the server has none: hookd refuses.
    let mut plain = PostgresServer::start();
    let config = Config::from_toml(&format!(
        "[history]\npostgres_url = \"{}\"\npostgres_tls = \"require\"",
        url_with_password(&plain, "127.0.0.1")
    ))
    .unwrap();
    let err = connect_error(&config.history).await;
    assert!(
        err.contains("server does not support TLS") && err.contains("history.postgres_tls = \"require\""),
        "{err}"
    );
    assert!(!err.contains(PG_PASSWORD), "{err}");
    plain.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_takes_a_certificate_it_cannot_verify() {
    let nobody_trusts = TestCa::new("unknown");
    let world = World::with_postgres(
        "pgtls_require",
        PostgresServer::start_tls(ServerTls::signed_by(&nobody_trusts).only()),
    )
    .await;
    let config = world.config_with(
        &url_with_password(&world.postgres, "127.0.0.1"),
        "postgres_tls = \"require\"",
    );
    let hookd = Hookd::start(config).await;
    delivered_and_logged(&world, &hookd, "require", 3).await;
    let (tls, plain) = hookd_connections(&world.postgres);
    assert!(
        tls > 0 && plain == 0,
        "hookd's connections: {tls} over TLS, {plain} plain"
    );
    hookd.stop().await;
}
