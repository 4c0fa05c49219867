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

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

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
    /// Extra TOML appended to the subscription (e.g. a plugin table).
    #[arg(long, default_value = "")]
    subscription_extra: String,
}

/// What the receiver saw.
struct Seen {
    count: AtomicUsize,
    rejected: AtomicUsize,
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

async fn receiver(listener: TcpListener, seen: Arc<Seen>) {
    let verifier = Arc::new(hookd::sign::Verifier::new(&[SECRET]).expect("secret"));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (seen, verifier) = (seen.clone(), verifier.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let (seen, verifier) = (seen.clone(), verifier.clone());
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    if verifier.verify(&parts.headers, &body).is_err() {
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
    let api = hookd::api::client::ApiClient::new(&format!("http://{addr}"), None);
    for _ in 0..400 {
        if api.get("/readyz").await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("hookd did not become ready on {addr}");
}

/// One producer connection posting events one per request.
async fn producer(addr: SocketAddr, ids: std::ops::Range<usize>, interval: Option<Duration>, run: &str) -> usize {
    let stream = TcpStream::connect(addr).await.expect("connect to hookd");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut next = Instant::now();
    let mut ok = 0;
    for n in ids {
        if let Some(interval) = interval {
            next += interval;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
        }
        let body = format!(
            r#"{{"type":"coupon.redeemed","id":"evt_{run}_{n}","data":{{"coupon":"SPRING10","amount":12.5,"customer":"cus_{n}","sent_ns":"{}"}}}}"#,
            unix_nanos()
        );
        let req = Request::post(format!("http://{addr}/v1/events"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        if let Ok(resp) = sender.send_request(req).await {
            if resp.status() == StatusCode::ACCEPTED {
                ok += 1;
            }
            let _ = resp.into_body().collect().await;
        }
    }
    ok
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

    let seen = Arc::new(Seen {
        count: AtomicUsize::new(0),
        rejected: AtomicUsize::new(0),
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
        Some(url) => format!("redis_url = \"{url}\"\nkey_prefix = \"load{run}\""),
        None => format!("data_dir = {:?}", dir.join("data").display().to_string()),
    };
    let config = |dispatch: bool| {
        let path = dir.join(format!("hookd-{dispatch}.toml"));
        let text = format!(
            "[server]\nlisten = \"{addr}\"\n[queue]\n{queue}\n[ingest]\nmax_batch = 1000\n[delivery]\ndispatch = {dispatch}\nallow_http = true\nallow_private_networks = true\nmax_in_flight = 512\nmax_in_flight_per_subscription = 512\n[[subscriptions]]\nname = \"load\"\nurl = \"http://{rx_addr}/hook\"\nevents = [\"*\"]\nsecrets = [\"{SECRET}\"]\n{}\n",
            args.subscription_extra
        );
        std::fs::write(&path, text).expect("write config");
        path
    };

    let backend = if args.redis.is_some() { "redis" } else { "embedded" };
    match args.mode.as_str() {
        "backlog" => {
            let ingest_only = start_hookd(&binary, &config(false));
            wait_ready(addr).await;
            let api = hookd::api::client::ApiClient::new(&format!("http://{addr}"), None);
            let queued_at = Instant::now();
            for start in (0..args.events).step_by(1000) {
                let batch: Vec<String> = (start..(start + 1000).min(args.events))
                    .map(|n| format!(r#"{{"type":"coupon.redeemed","id":"evt_{run}_{n}","data":{{"coupon":"SPRING10","amount":12.5,"customer":"cus_{n}"}}}}"#))
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
            let started = Instant::now();
            let _dispatcher = start_hookd(&binary, &config(true));
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
            println!(
                "backlog drain ({backend}): {} signed deliveries in {secs:.2}s = {:.0} deliveries/s (first delivery {:.2}s after start; {} rejected signatures)",
                args.events,
                args.events as f64 / secs,
                (first - started).as_secs_f64(),
                seen.rejected.load(Ordering::Relaxed)
            );
        }
        "e2e" => {
            let _hookd = start_hookd(&binary, &config(true));
            wait_ready(addr).await;
            let per = args.events / args.connections;
            let interval = (args.rate > 0).then(|| Duration::from_secs_f64(args.connections as f64 / args.rate as f64));
            let started = Instant::now();
            let tasks: Vec<_> = (0..args.connections)
                .map(|c| {
                    let run = run.clone();
                    tokio::spawn(async move { producer(addr, c * per..(c + 1) * per, interval, &run).await })
                })
                .collect();
            let mut accepted = 0;
            for t in tasks {
                accepted += t.await.unwrap_or(0);
            }
            let post_secs = started.elapsed().as_secs_f64();
            let total = per * args.connections;
            while seen.count.load(Ordering::Relaxed) < accepted && started.elapsed() < Duration::from_secs(300) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let secs = started.elapsed().as_secs_f64();
            let mut lat = seen.latencies_us.lock().unwrap().clone();
            lat.sort_unstable();
            println!(
                "e2e ({backend}, {} connections, rate {}): {accepted}/{total} accepted in {post_secs:.2}s ({:.0} ingests/s), {} delivered in {secs:.2}s = {:.0} deliveries/s",
                args.connections,
                if args.rate == 0 { "max".to_string() } else { format!("{}/s", args.rate) },
                accepted as f64 / post_secs,
                seen.count.load(Ordering::Relaxed),
                seen.count.load(Ordering::Relaxed) as f64 / secs
            );
            println!(
                "ingest-to-delivery latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
                percentile(&lat, 0.50),
                percentile(&lat, 0.90),
                percentile(&lat, 0.99),
                percentile(&lat, 1.0)
            );
        }
        other => panic!("unknown --mode {other}: use backlog or e2e"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
