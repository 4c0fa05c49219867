//! Redis failing under hookd: a real Redis Cluster (three masters with one
//! replica each) losing a master under load, a master failing over to a
//! replica that missed the last writes (with and without
//! `queue.redis_wait_replicas`), and a Redis without persistence
//! restarted empty under load.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hookd::api::client::ApiClient;
use hookd::config::Config;
use hookd::model::EventId;
use hookd::queue::redis::due_key;
use hookd::queue::shard_of;
use serde_json::json;
use support::cluster::RedisCluster;
use support::daemon::Hookd;
use support::receiver::{Answer, Receiver, SECRET};
use support::RedisServer;

/// Queue shards: eight hash tags, spread by their slots over the masters.
const SHARDS: u16 = 8;

/// hookd's config for a test: Redis at `queue`'s URL (a cluster if said),
/// one subscription `crm` to `rx`, quick retries.
fn config(queue: &str, rx: &Receiver) -> Config {
    let text = format!(
        r#"[queue]
{queue}
key_prefix = "{prefix}"
shards = {SHARDS}
lease = "2s"
poll_interval = "20ms"
redis_response_timeout = "2s"
[delivery]
allow_http = true
allow_private_networks = true
timeout = "900ms"
max_retries = 1000
max_retries_limit = 1000
backoff_initial = "100ms"
backoff_multiplier = 1.5
backoff_max = "300ms"
[[subscriptions]]
name = "crm"
url = "{url}"
events = ["*"]
secrets = ["{SECRET}"]
"#,
        prefix = support::unique_prefix("cluster"),
        url = rx.url("crm"),
    );
    Config::from_toml(&text).unwrap_or_else(|e| panic!("test config: {e}\n{text}"))
}

/// The shard of the event `id`.
fn shard(id: &str) -> u16 {
    shard_of(&EventId::parse(id).unwrap(), SHARDS)
}

/// The events producers POSTed: when each was answered, and how.
#[derive(Default)]
struct Sent {
    /// Acknowledged (2xx) event ids, with when the answer came.
    acked: Vec<(String, Instant)>,
    /// Refused or failed POSTs.
    failed: usize,
}

/// POSTs one event after another, ids `evt_<name>_<n>`, until `stop`.
async fn produce(api: ApiClient, name: &'static str, sent: Arc<Mutex<Sent>>, stop: Arc<AtomicBool>) {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let id = format!("evt_{name}_{n}");
        n += 1;
        let event = json!({"type": "order.paid", "id": id, "data": {"n": n}});
        let answer = api.post("/v1/events", event.to_string()).await;
        {
            let mut sent = sent.lock().unwrap();
            match answer {
                Ok(_) => sent.acked.push((id, Instant::now())),
                Err(_) => sent.failed += 1,
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until every id in `ids` arrived at `rx`, verified, since `since`
/// (when the receiver last began to answer 2xx), or until `limit`;
/// returns those that did not.
async fn undelivered(rx: &Receiver, ids: &[String], since: Instant, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    loop {
        let arrived: HashSet<String> = rx
            .arrivals()
            .into_iter()
            .filter(|a| a.verified && a.at >= since)
            .map(|a| a.id)
            .collect();
        let missing: Vec<String> = ids.iter().filter(|id| !arrived.contains(*id)).cloned().collect();
        if missing.is_empty() || Instant::now() > deadline {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kills the master holding shard 0 while producers POST events
/// continuously and hookd delivers them; its replica is promoted, hookd
/// follows, and every event acknowledged, before the kill or after, is
/// delivered. Prints how long deliveries stalled.
async fn failover_under_load(wait_replicas: u32) {
    let mut cluster = tokio::task::spawn_blocking(RedisCluster::start).await.unwrap();
    let rx = Receiver::start().await;
    let mut config = config(&format!("redis_url = \"{}\"\ncluster = true", cluster.seed_url()), &rx);
    config.queue.redis_wait_replicas = wait_replicas;
    config.queue.redis_wait_timeout = Duration::from_millis(500);
    let prefix = config.queue.key_prefix.clone();

    // The shards' keys are spread over all three masters.
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3, "three masters");
    let holders: Vec<u16> = (0..SHARDS)
        .map(|s| cluster.master_of_key(&due_key(&prefix, s)))
        .collect();
    for master in &masters {
        assert!(
            holders.contains(master),
            "master {master} holds no shard: {holders:?} over {masters:?}"
        );
    }

    let started = Instant::now();
    let hookd = Hookd::start(config).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(Mutex::new(Sent::default()));
    let producers: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|name| {
            let api = ApiClient::new(&hookd.url, None);
            tokio::spawn(produce(api, name, sent.clone(), stop.clone()))
        })
        .collect();
    rx.wait_for(Duration::from_secs(20), "deliveries under load", |a| a.len() >= 200)
        .await;
    // Every shard's keys were written on the master holding its slot.
    for (s, &holder) in holders.iter().enumerate() {
        let slot = cluster.slot_of(&due_key(&prefix, s as u16)).to_string();
        let keys = cluster.command(holder, &["CLUSTER", "COUNTKEYSINSLOT", &slot]);
        assert!(
            keys.parse::<u64>().is_ok_and(|n| n > 0),
            "master {holder} holds shard {s}'s keys: {keys}"
        );
    }
    let per_shard = {
        let sent = sent.lock().unwrap();
        let mut counts = vec![0usize; SHARDS as usize];
        for (id, _) in &sent.acked {
            counts[shard(id) as usize] += 1;
        }
        counts
    };
    assert!(per_shard.iter().all(|&n| n > 0), "events in every shard: {per_shard:?}");

    let victim = holders[0];
    let replica = cluster.replica_of(victim);
    let killed_at = Instant::now();
    cluster.kill(victim);
    let (cluster, promoted_after) = tokio::task::spawn_blocking(move || {
        let took = cluster.wait_for_promotion(replica);
        (cluster, took)
    })
    .await
    .unwrap();
    // Deliveries of the failed master's shards go on after the promotion.
    let resumed = rx
        .wait_for(
            Duration::from_secs(30),
            "a delivery of the failed master's shards after the kill",
            |a| {
                a.iter()
                    .any(|a| a.at > killed_at && holders[shard(&a.id) as usize] == victim)
            },
        )
        .await;
    let first_after = resumed
        .iter()
        .filter(|a| a.at > killed_at && holders[shard(&a.id) as usize] == victim)
        .map(|a| a.at)
        .min()
        .unwrap();
    // Keep producing a while after the promotion.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.await.unwrap();
    }

    let sent = std::mem::take(&mut *sent.lock().unwrap());
    let ids: Vec<String> = sent.acked.iter().map(|(id, _)| id.clone()).collect();
    let before: Vec<String> = sent
        .acked
        .iter()
        .filter(|(_, at)| *at < killed_at)
        .map(|(id, _)| id.clone())
        .collect();
    let missing = undelivered(&rx, &ids, started, Duration::from_secs(30)).await;
    let arrivals = rx.arrivals();
    assert!(arrivals.iter().all(|a| a.verified), "every signature verified");
    // The longest gap between deliveries after the kill, over all shards.
    let mut times: Vec<Instant> = arrivals.iter().map(|a| a.at).filter(|at| *at > killed_at).collect();
    times.sort();
    let gap = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
        .max(times.first().map(|t| *t - killed_at).unwrap_or_default());
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for a in &arrivals {
        *counts.entry(a.id.as_str()).or_default() += 1;
    }
    let twice = counts.values().filter(|&&n| n > 1).count();
    eprintln!(
        "failover (redis_wait_replicas = {wait_replicas}): {} events acknowledged ({} before the kill), {} POSTs \
         refused; replica promoted {:?} after the kill; the failed master's shards delivered again {:?} after \
         it; longest gap between any deliveries {gap:?}; {} delivered more than once; {} acknowledged events lost: \
         {:?}",
        ids.len(),
        before.len(),
        sent.failed,
        promoted_after,
        first_after - killed_at,
        twice,
        missing.len(),
        missing.iter().take(10).collect::<Vec<_>>()
    );
    assert!(
        missing.is_empty(),
        "acknowledged events lost in the failover: {} of {}",
        missing.len(),
        ids.len()
    );
    hookd.stop().await;
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_fails_over_under_load_and_nothing_acknowledged_is_lost() {
    failover_under_load(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_fails_over_under_load_with_wait_and_nothing_acknowledged_is_lost() {
    failover_under_load(1).await;
}

/// The master holding shard 0 takes events while its replica has lost its
/// link (replication is asynchronous: the master goes on), then dies; the
/// replica is promoted without those writes. The receiver refuses every
/// delivery until then, so none is delivered before the failure. Returns
/// (acknowledged events of that master's shards, how many of them were
/// lost, POSTs refused).
async fn failover_to_a_lagging_replica(wait_replicas: u32) -> (usize, usize, usize) {
    let mut cluster = tokio::task::spawn_blocking(RedisCluster::start).await.unwrap();
    let rx = Receiver::start_with(|_, _, _| Answer::Status(503, vec![])).await;
    let mut config = config(&format!("redis_url = \"{}\"\ncluster = true", cluster.seed_url()), &rx);
    config.queue.redis_wait_replicas = wait_replicas;
    config.queue.redis_wait_timeout = Duration::from_millis(300);
    let prefix = config.queue.key_prefix.clone();
    let victim = cluster.master_of_key(&due_key(&prefix, 0));
    let replica = cluster.replica_of(victim);
    let hookd = Hookd::start(config).await;
    let api = ApiClient::new(&hookd.url, None);

    let victim_shards: HashSet<u16> = (0..SHARDS)
        .filter(|&s| cluster.master_of_key(&due_key(&prefix, s)) == victim)
        .collect();
    cluster.cut_replication(replica);
    let mut acked = Vec::new();
    let mut refused = 0;
    let mut tried = 0;
    let mut n = 0;
    // Events until a dozen of the victim's were tried.
    while tried < 12 {
        let id = format!("evt_lag_{n}");
        n += 1;
        if victim_shards.contains(&shard(&id)) {
            tried += 1;
        }
        let event = json!({"type": "order.paid", "id": id, "data": {}});
        match api.post("/v1/events", event.to_string()).await {
            Ok(_) => acked.push(id),
            Err(_) => refused += 1,
        }
    }
    cluster.kill(victim);
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.wait_for_promotion(replica);
        cluster
    })
    .await
    .unwrap();
    let answering = Instant::now();
    rx.answer_with(|_, _, _| Answer::ok());
    let on_victim: Vec<String> = acked
        .iter()
        .filter(|id| victim_shards.contains(&shard(id)))
        .cloned()
        .collect();
    let missing = undelivered(&rx, &acked, answering, Duration::from_secs(10)).await;
    eprintln!(
        "lagging replica (redis_wait_replicas = {wait_replicas}): {} events acknowledged, {} of them on the failed \
         master, {refused} POSTs refused; {} acknowledged events lost: {missing:?}",
        acked.len(),
        on_victim.len(),
        missing.len()
    );
    assert!(
        missing.iter().all(|id| on_victim.contains(id)),
        "only the failed master's events can be lost"
    );
    hookd.stop().await;
    drop(cluster);
    (on_victim.len(), missing.len(), refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_wait_a_failover_loses_what_the_replica_had_not_received() {
    let (on_victim, lost, refused) = failover_to_a_lagging_replica(0).await;
    assert_eq!(refused, 0, "asynchronous replication: every POST was acknowledged");
    assert!(on_victim > 0);
    assert_eq!(
        lost, on_victim,
        "every event the failed master acknowledged while its replica was cut off is lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_an_event_is_acknowledged_only_once_a_replica_has_it() {
    let (on_victim, lost, refused) = failover_to_a_lagging_replica(1).await;
    assert!(
        refused >= 12,
        "the master's events were refused, not acknowledged: {refused}"
    );
    assert_eq!(on_victim, 0, "none of the failed master's events was acknowledged");
    assert_eq!(lost, 0);
}

/// Everything hookd logs in this test binary, at warn and above.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || LogWriter(writer.clone()))
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        buffer
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// XADDs one event after another to the stream, ids `evt_stream_<n>`,
/// until `stop`, reconnecting after errors (Redis restarting).
async fn produce_to_stream(url: String, stream: String, sent: Arc<Mutex<Sent>>, stop: Arc<AtomicBool>) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = None;
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            conn = client.get_multiplexed_async_connection().await.ok();
        }
        if let Some(c) = conn.as_mut() {
            let id = format!("evt_stream_{n}");
            n += 1;
            let added: redis::RedisResult<String> = redis::cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("type")
                .arg("order.paid")
                .arg("data")
                .arg("{}")
                .arg("id")
                .arg(&id)
                .query_async(c)
                .await;
            let ok = added.is_ok();
            {
                let mut sent = sent.lock().unwrap();
                if ok {
                    sent.acked.push((id, Instant::now()));
                } else {
                    sent.failed += 1;
                }
            }
            if !ok {
                conn = None;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A Redis without persistence restarted empty while producers send
/// events over HTTP and the stream: hookd notices, says what was lost,
/// makes the stream's consumer group again and delivers every event
/// accepted after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_under_load_keeps_delivering_new_events() {
    let logs = logs();
    let mut redis = RedisServer::start_volatile();
    let rx = Receiver::start().await;
    let config = config(&format!("redis_url = \"{}\"", redis.url()), &rx);
    let prefix = config.queue.key_prefix.clone();
    let group = config.ingest.stream_group.clone();
    let stream = hookd::ingest::stream::stream_key(&prefix);
    let hookd = Hookd::start(config).await;

    let stop = Arc::new(AtomicBool::new(false));
    let http = Arc::new(Mutex::new(Sent::default()));
    let streamed = Arc::new(Mutex::new(Sent::default()));
    let producers = vec![
        tokio::spawn(produce(
            ApiClient::new(&hookd.url, None),
            "http",
            http.clone(),
            stop.clone(),
        )),
        tokio::spawn(produce_to_stream(
            redis.url(),
            stream.clone(),
            streamed.clone(),
            stop.clone(),
        )),
    ];
    rx.wait_for(Duration::from_secs(20), "deliveries from both sources", |a| {
        a.iter().filter(|a| a.id.starts_with("evt_stream_")).count() >= 20
            && a.iter().filter(|a| a.id.starts_with("evt_http_")).count() >= 20
    })
    .await;
    // Hold some deliveries back, so the queue is not empty when Redis goes.
    rx.answer_with(|_, _, _| Answer::Status(503, vec![]));
    let held_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let queued = redis.command(&["ZCARD", &due_key(&prefix, 0)]);

    tokio::task::block_in_place(|| redis.restart_empty());
    let back_at = Instant::now();
    rx.answer_with(|_, _, _| Answer::ok());
    let answering = Instant::now();
    // Produce a while after the restart, then stop.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.await.unwrap();
    }

    let after = |sent: &Arc<Mutex<Sent>>| -> Vec<String> {
        let sent = sent.lock().unwrap();
        sent.acked
            .iter()
            .filter(|(_, at)| *at > back_at)
            .map(|(id, _)| id.clone())
            .collect()
    };
    let (http_after, stream_after) = (after(&http), after(&streamed));
    assert!(
        !http_after.is_empty() && !stream_after.is_empty(),
        "events were accepted after the restart"
    );
    let missing_http = undelivered(&rx, &http_after, answering, Duration::from_secs(20)).await;
    let missing_stream = undelivered(&rx, &stream_after, answering, Duration::from_secs(20)).await;
    let before = |sent: &Arc<Mutex<Sent>>| -> Vec<String> {
        let sent = sent.lock().unwrap();
        sent.acked
            .iter()
            .filter(|(_, at)| *at < back_at)
            .map(|(id, _)| id.clone())
            .collect()
    };
    // Delivered: answered 2xx, before the hold or since it ended.
    let delivered: HashSet<String> = rx
        .arrivals()
        .into_iter()
        .filter(|a| a.verified && (a.at < held_at || a.at >= answering))
        .map(|a| a.id)
        .collect();
    let lost_http = before(&http).into_iter().filter(|id| !delivered.contains(id)).count();
    let lost_stream = before(&streamed)
        .into_iter()
        .filter(|id| !delivered.contains(id))
        .count();
    eprintln!(
        "empty restart: shard 0 held {queued} queued deliveries; after the restart {} HTTP and {} stream events \
         accepted, {} and {} of them undelivered; of those accepted before, {} HTTP and {} stream events lost",
        http_after.len(),
        stream_after.len(),
        missing_http.len(),
        missing_stream.len(),
        lost_http,
        lost_stream
    );
    assert!(
        missing_http.is_empty(),
        "HTTP events accepted after the restart: {missing_http:?}"
    );
    assert!(
        missing_stream.is_empty(),
        "stream events added after the restart: {missing_stream:?}"
    );
    assert!(rx.arrivals().iter().all(|a| a.verified));
    let groups = redis.command(&["XINFO", "GROUPS", &stream]);
    assert!(groups.contains(&group), "the consumer group was made again: {groups}");

    // hookd said what was lost, once, rather than failing on every read.
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        if text.contains("Redis lost its data") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for line in text.lines().filter(|l| l.contains("lost") || l.contains("gone")) {
        eprintln!("logged: {line}");
    }
    assert!(text.contains("Redis lost its data"), "the data loss is logged: {text}");
    assert!(text.contains("every delivery queued before"), "{text}");
    assert!(
        text.matches("NOGROUP").count() <= 2,
        "no loop on NOGROUP: {}",
        text.matches("NOGROUP").count()
    );
    hookd.stop().await;
}
