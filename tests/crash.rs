//! Reliability of the real `hookd serve` process: SIGKILL mid-delivery loses
//! nothing (at least once), SIGTERM drains what is in flight.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hookd::api::client::ApiClient;
use serde_json::json;
use support::receiver::{Answer, Receiver, SECRET};
use support::{free_port, RedisServer};

/// A `hookd serve` child process.
struct Process {
    child: Child,
    api: ApiClient,
}

impl Process {
    async fn start(config: &Path, port: u16) -> Process {
        let child = Command::new(env!("CARGO_BIN_EXE_hookd"))
            .args(["serve", "--config"])
            .arg(config)
            .env("HOOKD_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start hookd");
        let api = ApiClient::new(&format!("http://127.0.0.1:{port}"), None);
        let deadline = Instant::now() + Duration::from_secs(20);
        while api.get("/readyz").await.is_err() {
            assert!(Instant::now() < deadline, "hookd did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Process { child, api }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(dir: &Path, queue: &str, port: u16, receiver: &Receiver) -> std::path::PathBuf {
    let path = dir.join("hookd.toml");
    let text = format!(
        r#"[server]
listen = "127.0.0.1:{port}"
{queue}
lease = "3s"
poll_interval = "20ms"
[delivery]
timeout = "1s"
allow_http = true
allow_private_networks = true
backoff_initial = "200ms"
max_in_flight_per_subscription = 32
[[subscriptions]]
name = "crm"
url = "{url}"
events = ["*"]
secrets = ["{SECRET}"]
"#,
        url = receiver.url("crm")
    );
    std::fs::write(&path, text).unwrap();
    path
}

async fn send_many(api: &ApiClient, from: usize, to: usize) {
    for chunk_start in (from..to).step_by(100) {
        let batch: Vec<_> = (chunk_start..(chunk_start + 100).min(to))
            .map(|n| json!({"type": "coupon.redeemed", "id": format!("evt_{n}"), "data": {"n": n}}))
            .collect();
        api.post("/v1/events/batch", serde_json::to_string(&batch).unwrap())
            .await
            .unwrap();
    }
}

async fn sigkill_loses_nothing(queue: &str, dir: &Path) {
    const EVENTS: usize = 3000;
    // ~32 in flight at 5 ms each: the kill lands mid-way.
    let rx = Receiver::start_with(|_, _, _| Answer::Slow(Duration::from_millis(5))).await;
    let port = free_port();
    let config = write_config(dir, queue, port, &rx);
    let first = Process::start(&config, port).await;
    send_many(&first.api, 0, EVENTS).await;
    rx.wait_for(Duration::from_secs(30), "some deliveries before the kill", |a| {
        a.len() >= EVENTS / 5
    })
    .await;
    drop(first); // SIGKILL, mid-delivery.
    let before_restart = rx.arrivals().len();
    assert!(
        before_restart < EVENTS,
        "the kill came too late to test anything ({before_restart} arrived)"
    );

    let second = Process::start(&config, port).await;
    let arrivals = rx
        .wait_for(Duration::from_secs(60), "every accepted event", |a| {
            a.iter()
                .map(|a| a.id.as_str())
                .collect::<std::collections::HashSet<_>>()
                .len()
                >= EVENTS
        })
        .await;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for a in &arrivals {
        *counts.entry(a.id.as_str()).or_default() += 1;
    }
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    eprintln!("{EVENTS} events: {before_restart} arrived before SIGKILL, {duplicates} delivered twice after restart");
    assert_eq!(counts.len(), EVENTS);
    assert!(arrivals.iter().all(|a| a.verified));
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_delivery_loses_nothing_redis() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let queue = format!(
        "[queue]\nredis_url = \"{}\"\nkey_prefix = \"{}\"",
        redis.url(),
        support::unique_prefix("crash")
    );
    sigkill_loses_nothing(&queue, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_delivery_loses_nothing_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let queue = format!(
        "[queue]\ndata_dir = {:?}",
        dir.path().join("data").display().to_string()
    );
    sigkill_loses_nothing(&queue, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_deliveries() {
    // Slow, but within the 1s attempt timeout.
    let rx = Receiver::start_with(|_, _, _| Answer::Slow(Duration::from_millis(800))).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let queue = format!(
        "[queue]\ndata_dir = {:?}",
        dir.path().join("data").display().to_string()
    );
    let config = write_config(dir.path(), &queue, port, &rx);
    let mut hookd = Process::start(&config, port).await;
    send_many(&hookd.api, 0, 20).await;
    rx.wait_for(Duration::from_secs(10), "all 20 in flight", |a| a.len() >= 20)
        .await;
    hookd.signal("TERM");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = hookd.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "hookd did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "clean exit: {status:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "it waited for the slow deliveries to finish"
    );

    // Their acknowledgements were written: after a restart and a full lease,
    // nothing is delivered again.
    let again = Process::start(&config, port).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        rx.arrivals().len(),
        20,
        "drained deliveries were settled, not redelivered"
    );
    drop(again);
}
