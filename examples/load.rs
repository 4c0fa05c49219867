//! Load tool: drives events through a real `hookd serve` process into a
//! local verifying receiver and prints deliveries per second and end-to-end
//! latency percentiles.
//!
//! ```text
//! cargo build --release && cargo run --release --example load -- --redis redis://127.0.0.1:6379/0 --mode backlog
//! cargo run --release --example load -- --redis redis://127.0.0.1:6379/0 --mode e2e --rate 5000
//! ```
//!
//! - `backlog`: an ingest-only hookd (`delivery.dispatch = false`) queues
//!   `--events` events; then a dispatching hookd starts and the tool times
//!   how fast it drains them.
//! - `e2e`: producers post one event per request over `--connections`
//!   connections (at `--rate` events/s in total, or as fast as they can with
//!   0); each event carries its send time, and the receiver records
//!   ingest-to-delivery latency.
//!
//! Without `--redis` hookd uses its embedded store in a temporary directory.
//! `--postgres URL` keeps the delivery log in PostgreSQL.
//!
//! Measurements beside the rate (all printed, and with `--json` also as
//! one JSON object on the last line, which `bench/run.py` reads):
//! - with `--redis`, Redis's `INFO commandstats`, CPU and memory before
//!   and after the timed run: commands and Redis CPU per delivered event,
//!   and Redis RAM per delivered event once the backlog is empty;
//! - hookd's CPU per delivered event and its resident memory, sampled
//!   every `--sample-secs` (`--mode soak` runs `--duration` seconds at
//!   `--rate` and reports the memory at the start and the end);
//! - `--retries N` first leaves N deliveries waiting as retries due in an
//!   hour (a subscription whose endpoint answers 500 once), then times the
//!   run: fresh deliveries with a deep retry backlog;
//! - `--subscriptions N --failing F --hanging H`: every event goes to N
//!   subscriptions, of which F answer 500 and H hang until the delivery
//!   timeout; the rate counts the healthy ones only.
//!
//! - `fair`: two tenants made through the API, `t0000` (A) and `t0001`
//!   (B), one subscription each. An ingest-only hookd first queues
//!   `--backlog` events of A's; then a dispatching hookd starts and B posts
//!   `--events` events at `--rate` while A's backlog drains. It reports
//!   B's ingest-to-delivery latency and how many of A's were still
//!   waiting when B's last arrived. With `--backlog 0` it is B alone: the
//!   baseline `bench/run.py` compares it with.
//!
//! Catalogue scale: with `--tenants N --tenant-subscriptions M` (both 0 by
//! default: one TOML subscription for every event, as before), hookd gets an
//! admin key (`server.api_keys`) and the tool makes N tenants (`t0000`…)
//! with M subscriptions each through the API (`POST /v1/tenants`,
//! `POST /v1/subscriptions` with the admin key naming `"tenant"`), before
//! sending anything. Each subscription posts to its own path on the
//! receiver (`/hook/{tenant}/{n}`) and the receiver verifies it with the
//! secret the API handed out for that subscription alone. Their patterns
//! mix exact types, `prefix.*` and `*`: a tenant's subscription 0 wants
//! `*`, the others (1 to 9, then again) want types the tool never sends
//! (`order.created`, `coupon.*` is not among them: `coupon.code.*`, …).
//! The events are sent as events of one tenant (`t0042`, or the last one if
//! there are fewer), with the admin key, so exactly one subscription wants
//! each, as in the default run; the TOML subscription is kept but wants
//! only `load.operator`, which is never sent. The tool counts deliveries
//! to any other path and prints them (they should be 0). In `e2e` mode one
//! warm-up event is delivered (and not counted) after the setup, so the
//! dispatcher's endpoints are known to be rebuilt before timing starts.
//!
//! ```text
//! cargo run --release --example load -- --mode e2e --tenants 1000 --tenant-subscriptions 10
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use futures_util::StreamExt as _;
use hookd::api::client::ApiClient;
use hookd::sign::Verifier;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The admin key hookd is given with `--tenants`.
const ADMIN_KEY: &str = "load-admin-key-01";
/// The event type the tool sends.
const EVENT_TYPE: &str = "coupon.redeemed";
/// The patterns of each tenant's subscriptions, by index modulo 10: only
/// the first wants [`EVENT_TYPE`].
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

#[derive(Parser)]
struct Args {
    /// backlog or e2e.
    #[arg(long, default_value = "e2e")]
    mode: String,
    /// Events to send.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Producer connections (e2e).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Total events per second in e2e mode; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Redis URL; without it, the embedded store.
    #[arg(long)]
    redis: Option<String>,
    /// The hookd binary (default: target/release/hookd next to this example).
    #[arg(long)]
    hookd: Option<PathBuf>,
    /// Extra TOML appended to the TOML subscription (e.g. a plugin table).
    #[arg(long, default_value = "")]
    subscription_extra: String,
    /// Tenants to make through the API (with --tenant-subscriptions).
    #[arg(long, default_value_t = 0)]
    tenants: usize,
    /// Subscriptions to make through the API for each tenant.
    #[arg(long, default_value_t = 0)]
    tenant_subscriptions: usize,
    /// API calls in flight at once while making tenants and subscriptions.
    #[arg(long, default_value_t = 8)]
    setup_concurrency: usize,
    /// PostgreSQL URL for the delivery log (`history.postgres_url`).
    #[arg(long)]
    postgres: Option<String>,
    /// TOML subscriptions every event goes to (e2e and soak).
    #[arg(long, default_value_t = 1)]
    subscriptions: usize,
    /// Of them, how many answer 500.
    #[arg(long, default_value_t = 0)]
    failing: usize,
    /// Of them, how many never answer (hookd gives up at its timeout).
    #[arg(long, default_value_t = 0)]
    hanging: usize,
    /// Tenant A's due deliveries when B starts (`--mode fair`).
    #[arg(long, default_value_t = 0)]
    backlog: usize,
    /// Deliveries to leave waiting as retries due in an hour first.
    #[arg(long, default_value_t = 0)]
    retries: usize,
    /// Seconds of the soak (`--mode soak`, at `--rate`).
    #[arg(long, default_value_t = 600)]
    duration: u64,
    /// Seconds between memory samples.
    #[arg(long, default_value_t = 10)]
    sample_secs: u64,
    /// Print the results as one JSON object on the last line.
    #[arg(long)]
    json: bool,
    /// `ingest.dedup_window` (hookd's default, 24h, without it): Redis
    /// keeps one dedup key per event for this long.
    #[arg(long)]
    dedup_window: Option<String>,
}

/// The tenants made through the API, and the one whose events are sent.
#[derive(Clone)]
struct Tenants {
    count: usize,
    per: usize,
    /// The tenant the events are sent as.
    sender: String,
}

impl Tenants {
    fn id(n: usize) -> String {
        format!("t{n:04}")
    }

    /// The one receiver path that should see the events.
    fn expected_path(&self) -> String {
        format!("/hook/{}/0", self.sender)
    }
}

/// What the receiver saw.
struct Seen {
    count: AtomicUsize,
    /// Attempts to `/later` (asked to retry in an hour).
    later: AtomicUsize,
    /// Attempts to the failing and hanging endpoints.
    failed: AtomicUsize,
    rejected: AtomicUsize,
    /// Deliveries to a path other than the expected one.
    unexpected: AtomicUsize,
    /// The path every delivery should reach.
    expected_path: RwLock<String>,
    /// The secret of each receiver path.
    verifiers: RwLock<HashMap<String, Arc<Verifier>>>,
    latencies_us: Mutex<Vec<u64>>,
    first: Mutex<Option<Instant>>,
    last: Mutex<Option<Instant>>,
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

impl Seen {
    /// Forgets every delivery seen so far (after a warm-up).
    fn reset(&self) {
        self.count.store(0, Ordering::Relaxed);
        self.rejected.store(0, Ordering::Relaxed);
        self.unexpected.store(0, Ordering::Relaxed);
        self.latencies_us.lock().unwrap().clear();
        *self.first.lock().unwrap() = None;
        *self.last.lock().unwrap() = None;
    }
}

async fn receiver(listener: TcpListener, seen: Arc<Seen>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let seen = seen.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let seen = seen.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let path = parts.uri.path();
                    // Endpoints that fail: `/later` asks for a retry in an
                    // hour (503, Retry-After), `/fail/…` answers 500,
                    // `/hang/…` never answers.
                    if path == "/later" {
                        seen.later.fetch_add(1, Ordering::Relaxed);
                        return Ok(Response::builder()
                            .status(503)
                            .header("retry-after", "3600")
                            .body(Full::new(Bytes::new()))
                            .unwrap());
                    }
                    if path.starts_with("/fail/") {
                        seen.failed.fetch_add(1, Ordering::Relaxed);
                        return Ok(Response::builder().status(500).body(Full::new(Bytes::new())).unwrap());
                    }
                    if path.starts_with("/hang/") {
                        seen.failed.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return Ok(Response::builder().status(204).body(Full::new(Bytes::new())).unwrap());
                    }
                    // Each path is verified with its own subscription's secret.
                    let verifier = seen.verifiers.read().unwrap().get(path).cloned();
                    if verifier.is_none_or(|v| v.verify(&parts.headers, &body).is_err()) {
                        seen.rejected.fetch_add(1, Ordering::Relaxed);
                        return Ok::<_, hyper::Error>(
                            Response::builder().status(400).body(Full::new(Bytes::new())).unwrap(),
                        );
                    }
                    let now = Instant::now();
                    let arrived_ns = unix_nanos();
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                        if let Some(sent) = v["data"]["sent_ns"].as_str().and_then(|s| s.parse::<u128>().ok()) {
                            let us = (arrived_ns.saturating_sub(sent) / 1000) as u64;
                            seen.latencies_us.lock().unwrap().push(us);
                        }
                    }
                    if !path.starts_with(seen.expected_path.read().unwrap().as_str()) {
                        seen.unexpected.fetch_add(1, Ordering::Relaxed);
                    }
                    seen.first.lock().unwrap().get_or_insert(now);
                    *seen.last.lock().unwrap() = Some(now);
                    seen.count.fetch_add(1, Ordering::Relaxed);
                    Ok(Response::builder()
                        .status(StatusCode::NO_CONTENT)
                        .body(Full::new(Bytes::new()))
                        .unwrap())
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

struct Hookd(Child);

impl Drop for Hookd {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

fn start_hookd(binary: &PathBuf, config: &PathBuf) -> Hookd {
    let child = Command::new(binary)
        .args(["serve", "--config"])
        .arg(config)
        .env("HOOKD_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e} (build it with cargo build --release)",
                binary.display()
            )
        });
    Hookd(child)
}

async fn wait_ready(addr: SocketAddr) {
    let api = ApiClient::new(&format!("http://{addr}"), None);
    for _ in 0..400 {
        if api.get("/readyz").await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("hookd did not become ready on {addr}");
}

/// Makes the tenants and their subscriptions through the API, each
/// subscription's secret trusted at its own path on the receiver.
async fn make_tenants(api: &ApiClient, rx_addr: SocketAddr, tenants: &Tenants, concurrency: usize, seen: &Seen) {
    let started = Instant::now();
    let concurrency = concurrency.max(1);
    futures_util::stream::iter(0..tenants.count)
        .map(|n| async move {
            let id = Tenants::id(n);
            let body = serde_json::json!({"id": id, "name": format!("Load tenant {n}")});
            api.post("/v1/tenants", body.to_string())
                .await
                .unwrap_or_else(|e| panic!("make tenant {id}: {e}"));
        })
        .buffer_unordered(concurrency)
        .collect::<()>()
        .await;
    let tenants_secs = started.elapsed().as_secs_f64();
    let pairs = (0..tenants.count).flat_map(|t| (0..tenants.per).map(move |j| (t, j)));
    let made: Vec<(String, String)> = futures_util::stream::iter(pairs)
        .map(|(t, j)| async move {
            let id = Tenants::id(t);
            let path = format!("/hook/{id}/{j}");
            let body = serde_json::json!({
                "tenant": id,
                "name": format!("s{j}"),
                "url": format!("http://{rx_addr}{path}"),
                "events": PATTERNS[j % PATTERNS.len()],
            });
            let made = api
                .post("/v1/subscriptions", body.to_string())
                .await
                .unwrap_or_else(|e| panic!("make subscription {path}: {e}"));
            let secret = made["secret"].as_str().expect("a new subscription's secret").to_owned();
            (path, secret)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut verifiers = seen.verifiers.write().unwrap();
    for (path, secret) in made {
        verifiers.insert(path, Arc::new(Verifier::new(&[secret]).expect("secret")));
    }
    println!(
        "made {} tenants in {tenants_secs:.1}s and {} subscriptions through the API in {:.1}s ({} at once); events go to tenant {}",
        tenants.count,
        tenants.count * tenants.per,
        started.elapsed().as_secs_f64() - tenants_secs,
        concurrency,
        tenants.sender
    );
}

/// One event's JSON (of `tenant`, if any), carrying its send time if `sent`.
fn event_json(run: &str, n: impl std::fmt::Display, tenant: Option<&str>, sent: bool) -> String {
    let tenant = tenant.map(|t| format!(r#","tenant":"{t}""#)).unwrap_or_default();
    let sent = if sent {
        format!(r#","sent_ns":"{}""#, unix_nanos())
    } else {
        String::new()
    };
    format!(
        r#"{{"type":"{EVENT_TYPE}","id":"evt_{run}_{n}","data":{{"coupon":"SPRING10","amount":12.5,"customer":"cus_{n}"{sent}}}{tenant}}}"#
    )
}

/// One producer connection posting events one per request (as `tenant`,
/// with the admin key, if given): how many were accepted, and each
/// accepted one's answer time in µs.
async fn producer(
    addr: SocketAddr,
    ids: std::ops::Range<usize>,
    interval: Option<Duration>,
    run: &str,
    tenant: Option<&str>,
) -> (usize, Vec<u64>) {
    let stream = TcpStream::connect(addr).await.expect("connect to hookd");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut next = Instant::now();
    let mut ok = 0;
    let mut answered_us = Vec::with_capacity(ids.len());
    for n in ids {
        if let Some(interval) = interval {
            next += interval;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
        }
        let body = event_json(run, n, tenant, true);
        let mut req = Request::post(format!("http://{addr}/v1/events")).header("content-type", "application/json");
        if tenant.is_some() {
            req = req.header("authorization", format!("Bearer {ADMIN_KEY}"));
        }
        let req = req.body(Full::new(Bytes::from(body))).expect("request");
        let posted = Instant::now();
        if let Ok(resp) = sender.send_request(req).await {
            if resp.status() == StatusCode::ACCEPTED {
                ok += 1;
                answered_us.push(posted.elapsed().as_micros() as u64);
            }
            let _ = resp.into_body().collect().await;
        }
    }
    (ok, answered_us)
}

/// `connections` producers, each posting `per` events (numbered apart)
/// every `interval`, or as fast as they can.
fn producers(
    addr: SocketAddr,
    connections: usize,
    per: usize,
    interval: Option<Duration>,
    run: &str,
    tenant: Option<&str>,
) -> Vec<tokio::task::JoinHandle<(usize, Vec<u64>)>> {
    (0..connections)
        .map(|c| {
            let (run, tenant) = (run.to_owned(), tenant.map(str::to_owned));
            tokio::spawn(async move { producer(addr, c * per..(c + 1) * per, interval, &run, tenant.as_deref()).await })
        })
        .collect()
}

/// What Redis reports about itself: commands served, CPU seconds used,
/// bytes of data held.
#[derive(Clone, Copy, Debug, Default)]
struct RedisStats {
    calls: u64,
    cpu_secs: f64,
    used_memory: u64,
    used_memory_rss: u64,
}

/// `INFO` of the Redis at `url` (commands counted over every
/// `cmdstat_*` but `INFO` itself).
async fn redis_stats(url: &str) -> RedisStats {
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis");
    let info: String = redis::cmd("INFO")
        .arg("everything")
        .query_async(&mut conn)
        .await
        .expect("INFO");
    let mut stats = RedisStats::default();
    for line in info.lines() {
        if let Some(rest) = line.strip_prefix("cmdstat_") {
            if rest.starts_with("info:") {
                continue;
            }
            if let Some(calls) = rest.split([':', ',']).find_map(|kv| kv.strip_prefix("calls=")) {
                stats.calls += calls.parse::<u64>().unwrap_or(0);
            }
        } else if let Some((key, value)) = line.trim().split_once(':') {
            match key {
                "used_cpu_sys" | "used_cpu_user" => stats.cpu_secs += value.parse::<f64>().unwrap_or(0.0),
                "used_memory" => stats.used_memory = value.parse().unwrap_or(0),
                "used_memory_rss" => stats.used_memory_rss = value.parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    stats
}

/// CPU seconds a process has used (user and system), from /proc.
fn process_cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the
    // 12th, stime the 13th of them.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / hz
}

/// Resident memory of a process in bytes, from /proc.
fn process_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Leaves `n` deliveries waiting as retries due in an hour: events only
/// the `later` subscription wants, each attempted once (its endpoint asks
/// for a retry in an hour).
async fn make_retries(api: &ApiClient, run: &str, n: usize, seen: &Seen) {
    let started = Instant::now();
    post_batches(api, n, "retries", |i| {
        format!(r#"{{"type":"load.later","id":"evt_{run}_later_{i}","data":{{"n":{i}}}}}"#)
    })
    .await;
    let queued = started.elapsed().as_secs_f64();
    while seen.later.load(Ordering::Relaxed) < n {
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "only {} of {n} retries attempted after 30 min",
            seen.later.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let attempted = started.elapsed().as_secs_f64();
    // ... and once PostgreSQL's autovacuum has had its turn with them (it
    // analyzes a table after many writes): a deep backlog's steady state.
    let settle = Duration::from_secs(30);
    // The timed run starts once the delivery log has caught up with them.
    loop {
        let ready = api.get("/readyz").await.unwrap_or_default();
        if ready["log"]["spooled"].as_u64() == Some(0) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3600),
            "the delivery log never caught up: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let logged = started.elapsed().as_secs_f64();
    tokio::time::sleep(settle).await;
    println!(
        "{n} deliveries wait as retries due in an hour (queued in {queued:.1}s, attempted once in {attempted:.1}s, logged in {logged:.1}s; timing starts {}s later)",
        settle.as_secs()
    );
}

/// Posts events `0..n`, each `event(i)`'s JSON, in batches of 1,000, four
/// batches at once.
async fn post_batches(api: &ApiClient, n: usize, what: &str, event: impl Fn(usize) -> String) {
    let event = &event;
    futures_util::stream::iter((0..n).step_by(1000))
        .map(|start| async move {
            let batch: Vec<String> = (start..(start + 1000).min(n)).map(event).collect();
            api.post("/v1/events/batch", format!("[{}]", batch.join(",")))
                .await
                .unwrap_or_else(|e| panic!("queue a batch of {what}: {e}"));
        })
        .buffer_unordered(4)
        .collect::<()>()
        .await;
}

/// Redis's stats before a timed run, with `--redis`.
async fn redis_before(args: &Args) -> Option<RedisStats> {
    match &args.redis {
        Some(url) => Some(redis_stats(url).await),
        None => None,
    }
}

/// Prints and records what the run cost per delivered event: Redis
/// commands, Redis CPU and Redis RAM (once the backlog is empty), and
/// hookd's CPU; hookd's resident memory at the end.
async fn report_costs(
    args: &Args,
    before: Option<RedisStats>,
    pid: u32,
    cpu_before: f64,
    delivered: usize,
    results: &mut serde_json::Map<String, serde_json::Value>,
) {
    let n = delivered.max(1) as f64;
    let hookd_us = (process_cpu_secs(pid) - cpu_before) * 1e6 / n;
    let rss = process_rss(pid);
    results.insert("hookd_cpu_us_per_event".into(), hookd_us.into());
    results.insert("hookd_rss_mb".into(), (rss as f64 / 1048576.0).into());
    let (Some(url), Some(before)) = (&args.redis, before) else {
        println!(
            "hookd: {hookd_us:.0} µs CPU per delivered event, {:.0} MiB resident",
            rss as f64 / 1048576.0
        );
        return;
    };
    let after = redis_stats(url).await;
    let commands = (after.calls - before.calls) as f64 / n;
    let cpu_us = (after.cpu_secs - before.cpu_secs) * 1e6 / n;
    let bytes = (after.used_memory as f64 - before.used_memory as f64) / n;
    println!(
        "per delivered event: Redis {commands:.1} commands, {cpu_us:.1} µs CPU, {bytes:.0} bytes of RAM kept; hookd {hookd_us:.0} µs CPU ({:.0} MiB resident)",
        rss as f64 / 1048576.0
    );
    results.insert("redis_commands_per_event".into(), commands.into());
    results.insert("redis_cpu_us_per_event".into(), cpu_us.into());
    results.insert("redis_bytes_per_event".into(), bytes.into());
}

/// Samples hookd's and Redis's resident memory every `every` for `total`.
async fn sample_memory(pid: u32, redis: Option<String>, every: Duration, total: Duration) -> Vec<(f64, u64, u64)> {
    let started = Instant::now();
    let mut out = Vec::new();
    while started.elapsed() < total {
        tokio::time::sleep(every).await;
        let redis_rss = match &redis {
            Some(url) => redis_stats(url).await.used_memory_rss,
            None => 0,
        };
        let sample = (started.elapsed().as_secs_f64(), process_rss(pid), redis_rss);
        println!(
            "  {:>5.0}s: hookd {:.1} MiB, redis {:.1} MiB",
            sample.0,
            sample.1 as f64 / 1048576.0,
            sample.2 as f64 / 1048576.0
        );
        out.push(sample);
    }
    out
}

/// Memory growth over a soak: from the first sample after a quarter of it
/// (at least a minute: the warm-up, and the dedup keys of a short window
/// filling up) to the last.
fn report_soak(samples: &[(f64, u64, u64)], duration: f64, results: &mut serde_json::Map<String, serde_json::Value>) {
    let from = (duration / 4.0).max(60.0);
    let Some(start) = samples.iter().find(|s| s.0 >= from).or(samples.first()) else {
        return;
    };
    let end = samples.last().expect("a sample");
    let growth = |a: u64, b: u64| {
        if a == 0 {
            0.0
        } else {
            (b as f64 - a as f64) * 100.0 / a as f64
        }
    };
    let (hookd, redis) = (growth(start.1, end.1), growth(start.2, end.2));
    println!(
        "memory from {:.0}s to {:.0}s: hookd {:.1} -> {:.1} MiB ({hookd:+.1}%), redis {:.1} -> {:.1} MiB ({redis:+.1}%)",
        start.0,
        end.0,
        start.1 as f64 / 1048576.0,
        end.1 as f64 / 1048576.0,
        start.2 as f64 / 1048576.0,
        end.2 as f64 / 1048576.0
    );
    results.insert("hookd_rss_start_mb".into(), (start.1 as f64 / 1048576.0).into());
    results.insert("hookd_rss_end_mb".into(), (end.1 as f64 / 1048576.0).into());
    results.insert("hookd_rss_growth_pct".into(), hookd.into());
    results.insert("redis_rss_start_mb".into(), (start.2 as f64 / 1048576.0).into());
    results.insert("redis_rss_end_mb".into(), (end.2 as f64 / 1048576.0).into());
    results.insert("redis_rss_growth_pct".into(), redis.into());
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let binary = args.hookd.clone().unwrap_or_else(|| {
        let exe = std::env::current_exe().expect("current exe");
        exe.parent()
            .and_then(|p| p.parent())
            .map(|p| p.join("hookd"))
            .expect("target dir")
    });
    let dir = std::env::temp_dir().join(format!("hookd-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let run = format!("{}", unix_nanos() % 1_000_000_000);

    let tenants = match (args.tenants, args.tenant_subscriptions) {
        _ if args.mode == "fair" => Some(Tenants {
            count: 2,
            per: 1,
            sender: Tenants::id(1),
        }),
        (0, 0) => None,
        (0, _) | (_, 0) => panic!("--tenants and --tenant-subscriptions go together"),
        (count, per) => Some(Tenants {
            count,
            per,
            sender: Tenants::id(42.min(count - 1)),
        }),
    };
    let sender = tenants.as_ref().map(|t| t.sender.clone());
    let seen = Arc::new(Seen {
        count: AtomicUsize::new(0),
        later: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        rejected: AtomicUsize::new(0),
        unexpected: AtomicUsize::new(0),
        expected_path: RwLock::new(tenants.as_ref().map_or("/hook/".to_owned(), Tenants::expected_path)),
        verifiers: RwLock::new(
            (0..args.subscriptions)
                .map(|i| {
                    (
                        format!("/hook/{i}"),
                        Arc::new(Verifier::new(&[SECRET]).expect("secret")),
                    )
                })
                .collect(),
        ),
        latencies_us: Mutex::new(Vec::with_capacity(args.events)),
        first: Mutex::new(None),
        last: Mutex::new(None),
    });
    let rx = TcpListener::bind("127.0.0.1:0").await.expect("bind receiver");
    let rx_addr = rx.local_addr().expect("addr");
    tokio::spawn(receiver(rx, seen.clone()));

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let queue = match &args.redis {
        Some(url) => format!(
            "redis_url = \"{url}\"\nkey_prefix = \"load{run}\"\ndata_dir = {:?}",
            dir.join("data").display().to_string()
        ),
        None => format!("data_dir = {:?}", dir.join("data").display().to_string()),
    };
    let history = match &args.postgres {
        Some(url) => format!("[history]\npostgres_url = \"{url}\"\n"),
        None => String::new(),
    };
    assert!(
        args.failing + args.hanging < args.subscriptions,
        "--failing and --hanging are counted among --subscriptions, and one must be healthy"
    );
    // Subscriptions: the healthy ones post to /hook/<n>, then the failing
    // and hanging ones; with --retries, one more that asks for a retry in
    // an hour. Failing endpoints are never disabled here, to measure them
    // failing for as long as the run lasts.
    let mut subscriptions = String::new();
    for i in 0..args.subscriptions {
        let healthy = args.subscriptions - args.failing - args.hanging;
        let path = if i < healthy {
            format!("/hook/{i}")
        } else if i < healthy + args.failing {
            format!("/fail/{i}")
        } else {
            format!("/hang/{i}")
        };
        let name = if i == 0 { "load".to_owned() } else { format!("load{i}") };
        subscriptions.push_str(&format!(
            "[[subscriptions]]\nname = \"{name}\"\nurl = \"http://{rx_addr}{path}\"\nevents = [\"{{toml_events}}\"]\nsecrets = [\"{SECRET}\"]\n{}\n",
            args.subscription_extra
        ));
    }
    if args.retries > 0 {
        subscriptions.push_str(&format!(
            "[[subscriptions]]\nname = \"later\"\nurl = \"http://{rx_addr}/later\"\nevents = [\"load.later\"]\nsecrets = [\"{SECRET}\"]\n"
        ));
    }
    let never_disable = if args.failing + args.hanging > 0 {
        "disable_after_failures = 0\ndisable_after = \"0s\"\ntimeout = \"2s\"\n"
    } else {
        ""
    };
    // With tenants: an admin key, and the TOML subscription wants only a
    // type never sent, so one subscription (the tenant's) wants each event.
    let (keys, toml_events) = match &tenants {
        Some(_) => (format!("api_keys = [\"{ADMIN_KEY}\"]\n"), "load.operator"),
        None => (String::new(), "*"),
    };
    let subscriptions = subscriptions.replace("{toml_events}", toml_events);
    let dedup = args
        .dedup_window
        .as_ref()
        .map(|w| format!("dedup_window = \"{w}\"\n"))
        .unwrap_or_default();
    // One subscription may use every slot of the process; with several,
    // each keeps the default cap, as a deployment would, so a hanging
    // endpoint holds at most its own share.
    let per_subscription = if args.subscriptions == 1 || args.mode == "fair" {
        "max_in_flight_per_subscription = 512\n"
    } else {
        ""
    };
    // A's backlog is deeper than plans.default lets a tenant queue.
    let plan = if args.mode == "fair" {
        format!("max_pending = {}\n", (args.backlog + args.events + 1).max(1000))
    } else {
        String::new()
    };
    let config = |dispatch: bool| {
        let path = dir.join(format!("hookd-{dispatch}.toml"));
        let text = format!(
            "[server]\nlisten = \"{addr}\"\n{keys}[queue]\n{queue}\n[ingest]\nmax_batch = 1000\nmax_queue_depth = 0\n{dedup}{history}[plans.default]\n{plan}allow_http = true\nallow_private_networks = true\n[delivery]\ndispatch = {dispatch}\nallow_http = true\nallow_private_networks = true\nmax_in_flight = 512\n{per_subscription}{never_disable}{subscriptions}"
        );
        std::fs::write(&path, text).expect("write config");
        path
    };

    let backend = if args.redis.is_some() { "redis" } else { "embedded" };
    let api = ApiClient::new(
        &format!("http://{addr}"),
        tenants.as_ref().map(|_| ADMIN_KEY.to_owned()),
    );
    let shape = match &tenants {
        Some(t) => format!(
            "{} tenants x {} API subscriptions, events of {}",
            t.count, t.per, t.sender
        ),
        None => "1 TOML subscription".to_owned(),
    };
    let mut results = serde_json::Map::new();
    results.insert("mode".into(), args.mode.clone().into());
    results.insert("backend".into(), backend.into());
    results.insert(
        "log".into(),
        if args.postgres.is_some() { "postgres" } else { backend }.into(),
    );
    match args.mode.as_str() {
        "backlog" => {
            let ingest_only = start_hookd(&binary, &config(false));
            wait_ready(addr).await;
            if let Some(tenants) = &tenants {
                make_tenants(&api, rx_addr, tenants, args.setup_concurrency, &seen).await;
            }
            let queued_at = Instant::now();
            for start in (0..args.events).step_by(1000) {
                let batch: Vec<String> = (start..(start + 1000).min(args.events))
                    .map(|n| event_json(&run, n, sender.as_deref(), false))
                    .collect();
                api.post("/v1/events/batch", format!("[{}]", batch.join(",")))
                    .await
                    .expect("queue batch");
            }
            println!(
                "queued {} events in {:.2}s",
                args.events,
                queued_at.elapsed().as_secs_f64()
            );
            drop(ingest_only);
            let before = redis_before(&args).await;
            let started = Instant::now();
            let dispatcher = start_hookd(&binary, &config(true));
            while seen.count.load(Ordering::Relaxed) < args.events {
                if started.elapsed() > Duration::from_secs(300) {
                    panic!(
                        "only {} of {} delivered after 300s",
                        seen.count.load(Ordering::Relaxed),
                        args.events
                    );
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let first = seen.first.lock().unwrap().expect("first");
            let last = seen.last.lock().unwrap().expect("last");
            let secs = (last - first).as_secs_f64();
            let rate = args.events as f64 / secs;
            println!(
                "backlog drain ({backend}, {shape}): {} signed deliveries in {secs:.2}s = {rate:.0} deliveries/s (first delivery {:.2}s after start; {} rejected signatures; {} to other subscriptions)",
                args.events,
                (first - started).as_secs_f64(),
                seen.rejected.load(Ordering::Relaxed),
                seen.unexpected.load(Ordering::Relaxed)
            );
            results.insert("deliveries_per_s".into(), rate.into());
            report_costs(&args, before, dispatcher.0.id(), 0.0, args.events, &mut results).await;
        }
        "e2e" | "soak" => {
            let hookd = start_hookd(&binary, &config(true));
            wait_ready(addr).await;
            if args.retries > 0 {
                make_retries(&api, &run, args.retries, &seen).await;
            }
            if let Some(tenants) = &tenants {
                make_tenants(&api, rx_addr, tenants, args.setup_concurrency, &seen).await;
            }
            // One delivery before timing: connections and, with tenants,
            // the dispatcher's endpoints (which follow the catalogue's last
            // publication asynchronously) are ready.
            api.post("/v1/events", event_json(&run, "warmup", sender.as_deref(), false))
                .await
                .expect("warm-up event");
            let deadline = Instant::now() + Duration::from_secs(60);
            let healthy = args.subscriptions - args.failing - args.hanging;
            while seen.count.load(Ordering::Relaxed) < healthy {
                assert!(
                    Instant::now() < deadline,
                    "the warm-up event was not delivered within 60s"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen.reset();
            let events = if args.mode == "soak" {
                (args.rate * args.duration) as usize
            } else {
                args.events
            };
            let per = events / args.connections;
            let interval = (args.rate > 0).then(|| Duration::from_secs_f64(args.connections as f64 / args.rate as f64));
            let before = redis_before(&args).await;
            let cpu_before = process_cpu_secs(hookd.0.id());
            let started = Instant::now();
            let tasks = producers(addr, args.connections, per, interval, &run, sender.as_deref());
            let samples = if args.mode == "soak" {
                Some(tokio::spawn(sample_memory(
                    hookd.0.id(),
                    args.redis.clone(),
                    Duration::from_secs(args.sample_secs),
                    Duration::from_secs(args.duration),
                )))
            } else {
                None
            };
            let mut accepted = 0;
            for t in tasks {
                accepted += t.await.map_or(0, |(ok, _)| ok);
            }
            let post_secs = started.elapsed().as_secs_f64();
            let total = per * args.connections;
            let want = accepted * healthy;
            while seen.count.load(Ordering::Relaxed) < want
                && started.elapsed() < Duration::from_secs(300 + args.duration)
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let secs = started.elapsed().as_secs_f64();
            let delivered = seen.count.load(Ordering::Relaxed);
            let mut lat = seen.latencies_us.lock().unwrap().clone();
            lat.sort_unstable();
            let rate = delivered as f64 / secs;
            println!(
                "{} ({backend}, {shape}, {} connections, rate {}): {accepted}/{total} accepted in {post_secs:.2}s ({:.0} ingests/s), {delivered} healthy deliveries in {secs:.2}s = {rate:.0} deliveries/s ({} attempts to failing endpoints; {} rejected signatures; {} to other subscriptions)",
                args.mode,
                args.connections,
                if args.rate == 0 { "max".to_string() } else { format!("{}/s", args.rate) },
                accepted as f64 / post_secs,
                seen.failed.load(Ordering::Relaxed),
                seen.rejected.load(Ordering::Relaxed),
                seen.unexpected.load(Ordering::Relaxed)
            );
            let (p50, p90, p99, max) = (
                percentile(&lat, 0.50),
                percentile(&lat, 0.90),
                percentile(&lat, 0.99),
                percentile(&lat, 1.0),
            );
            println!("ingest-to-delivery latency ms: p50 {p50:.2}  p90 {p90:.2}  p99 {p99:.2}  max {max:.2}");
            results.insert("deliveries_per_s".into(), rate.into());
            results.insert("ingests_per_s".into(), (accepted as f64 / post_secs).into());
            results.insert("accepted".into(), accepted.into());
            results.insert("delivered".into(), delivered.into());
            results.insert("p50_ms".into(), p50.into());
            results.insert("p99_ms".into(), p99.into());
            results.insert("max_ms".into(), max.into());
            results.insert("failing_attempts".into(), seen.failed.load(Ordering::Relaxed).into());
            report_costs(&args, before, hookd.0.id(), cpu_before, delivered, &mut results).await;
            if let Some(samples) = samples {
                let samples = samples.await.expect("memory samples");
                report_soak(&samples, args.duration as f64, &mut results);
            }
        }
        "fair" => {
            let tenants = tenants.as_ref().expect("fair mode makes its tenants");
            let ingest_only = start_hookd(&binary, &config(false));
            wait_ready(addr).await;
            make_tenants(&api, rx_addr, tenants, args.setup_concurrency, &seen).await;
            let a = Tenants::id(0);
            let queued_at = Instant::now();
            post_batches(&api, args.backlog, "A's backlog", |n| {
                event_json(&run, format!("a{n}"), Some(&a), false)
            })
            .await;
            println!(
                "queued {} events of tenant A ({a}) in {:.1}s",
                args.backlog,
                queued_at.elapsed().as_secs_f64()
            );
            drop(ingest_only);
            let hookd = start_hookd(&binary, &config(true));
            wait_ready(addr).await;
            let started = Instant::now();
            let per = args.events / args.connections;
            let interval = (args.rate > 0).then(|| Duration::from_secs_f64(args.connections as f64 / args.rate as f64));
            let tasks = producers(addr, args.connections, per, interval, &run, sender.as_deref());
            let (mut accepted, mut answered) = (0, Vec::new());
            for t in tasks {
                if let Ok((ok, times)) = t.await {
                    accepted += ok;
                    answered.extend(times);
                }
            }
            answered.sort_unstable();
            // B's deliveries are the ones carrying a send time.
            let b_delivered = || seen.latencies_us.lock().unwrap().len();
            while b_delivered() < accepted {
                assert!(
                    started.elapsed() < Duration::from_secs(600),
                    "only {} of B's {accepted} delivered after 600s",
                    b_delivered()
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // A's go to the path B's do not: the receiver counts them apart.
            let a_delivered = seen.unexpected.load(Ordering::Relaxed);
            let a_left = args.backlog.saturating_sub(a_delivered);
            let mut lat = seen.latencies_us.lock().unwrap().clone();
            lat.sort_unstable();
            let (p50, p99, max) = (percentile(&lat, 0.50), percentile(&lat, 0.99), percentile(&lat, 1.0));
            let ingest_p99 = percentile(&answered, 0.99);
            println!(
                "fair ({backend}): B's {accepted} events at {}/s delivered with A's backlog of {}: latency ms p50 {p50:.2}  p99 {p99:.2}  max {max:.2} (of which ingest's answer: p99 {ingest_p99:.2}); {a_delivered} of A's delivered meanwhile, {a_left} still waiting when B's last arrived; {} rejected signatures",
                args.rate,
                args.backlog,
                seen.rejected.load(Ordering::Relaxed)
            );
            results.insert("ingest_p99_ms".into(), ingest_p99.into());
            results.insert("accepted".into(), accepted.into());
            results.insert("p50_ms".into(), p50.into());
            results.insert("p99_ms".into(), p99.into());
            results.insert("max_ms".into(), max.into());
            results.insert("a_left".into(), a_left.into());
            drop(hookd);
        }
        other => panic!("unknown --mode {other}: use backlog, e2e, soak or fair"),
    }
    if args.json {
        println!("{}", serde_json::Value::Object(results));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
