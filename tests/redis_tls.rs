//! TLS to Redis (`rediss://`): a real redis-server serving only TLS with a
//! fresh certificate, hookd trusting it through `queue.redis_ca_file`.
//! Every Redis connection hookd makes goes through it: the queue's pool,
//! the delivery log's and the catalogue's, and the stream consumer's own.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hookd::config::Config;
use hookd::queue::redis::RedisQueue;
use hookd::queue::{now_ms, Queue};
use support::daemon::Hookd;
use support::receiver::{Receiver, SECRET};
use support::{free_port, queue_config, unique_prefix};

/// How long the server may take to start, and deliveries to arrive.
const WAIT: Duration = Duration::from_secs(20);

/// A redis-server listening only with TLS on a loopback port.
struct TlsRedis {
    child: Child,
    port: u16,
    /// Its certificate, which is also the CA clients must trust.
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl TlsRedis {
    fn start() -> TlsRedis {
        let dir = tempfile::tempdir().unwrap();
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        let (cert, key) = (dir.path().join("redis.crt"), dir.path().join("redis.key"));
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
        let port = free_port();
        let path = |p: &Path| p.display().to_string();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--tls-cert-file", &path(&cert), "--tls-key-file", &path(&key)])
            .args(["--tls-ca-cert-file", &path(&cert), "--tls-auth-clients", "no"])
            .args(["--save", "", "--appendonly", "no", "--dir", &path(dir.path())])
            .args(["--logfile", "redis.log"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        TlsRedis {
            child,
            port,
            ca: cert,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/0", self.port)
    }

    /// The queue configuration of a test: this server, trusted.
    fn queue_config(&self, name: &str) -> hookd::config::QueueConfig {
        let mut config = queue_config(&unique_prefix(name), Some(&self.url()), self._dir.path());
        config.redis_ca_file = Some(self.ca.clone());
        config
    }

    /// Connects a queue, retrying while the server starts.
    async fn queue(&self, name: &str) -> RedisQueue {
        let config = self.queue_config(name);
        let deadline = Instant::now() + WAIT;
        loop {
            match RedisQueue::connect(&config).await {
                Ok(queue) => return queue,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("no TLS connection to the test redis-server: {e}"),
            }
        }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_works_over_tls_and_refuses_an_untrusted_server() {
    let redis = TlsRedis::start();
    let queue = redis.queue("tls_queue").await;
    queue.ping().await.unwrap();
    assert_eq!(queue.depth(now_ms()).await.unwrap().due, 0);

    // Without the CA the server's certificate is not trusted, and the
    // error says what failed and where, without the URL's secrets.
    let mut untrusted = redis.queue_config("tls_untrusted");
    untrusted.redis_ca_file = None;
    untrusted.redis_url = Some(hookd::config::Secret::new(format!(
        "rediss://:hunter2@127.0.0.1:{}/0",
        redis.port
    )));
    let err = RedisQueue::connect(&untrusted)
        .await
        .err()
        .expect("an untrusted certificate")
        .to_string();
    assert!(err.contains(&format!("127.0.0.1:{}", redis.port)), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");

    // Plain text to a TLS port gets nowhere either.
    let mut plain = redis.queue_config("tls_plain");
    plain.redis_ca_file = None;
    plain.redis_url = Some(hookd::config::Secret::new(format!(
        "redis://127.0.0.1:{}/0",
        redis.port
    )));
    plain.redis_connect_timeout = Duration::from_secs(1);
    assert!(RedisQueue::connect(&plain).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hookd_delivers_stream_and_http_events_through_tls_redis() {
    let redis = TlsRedis::start();
    redis.queue("tls_wait").await; // up
    let rx = Receiver::start().await;
    let queue = redis.queue_config("tls_daemon");
    let toml = format!(
        "[queue]\nredis_url = {url:?}\nredis_ca_file = {ca:?}\nkey_prefix = {prefix:?}\npoll_interval = \"20ms\"\n\
         [delivery]\nallow_http = true\nallow_private_networks = true\n\
         [[subscriptions]]\nname = \"crm\"\nurl = {sink:?}\nevents = [\"link.*\"]\nsecrets = [\"{SECRET}\"]\n",
        url = redis.url(),
        ca = redis.ca.display().to_string(),
        prefix = queue.key_prefix,
        sink = rx.url("crm"),
    );
    let hookd = Hookd::start(Config::from_toml(&toml).unwrap()).await;
    hookd
        .send(serde_json::json!({"type": "link.clicked", "id": "evt_tls_http", "data": {"link": "a"}}))
        .await;

    // A producer XADDs over TLS too.
    let client = redis::Client::build_with_tls(
        redis.url(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(&redis.ca).unwrap()),
        },
    )
    .unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: String = redis::cmd("XADD")
        .arg(format!("{}:events", queue.key_prefix))
        .arg("*")
        .arg("type")
        .arg("link.clicked")
        .arg("data")
        .arg(r#"{"link":"b"}"#)
        .arg("id")
        .arg("evt_tls_stream")
        .query_async(&mut conn)
        .await
        .unwrap();

    let arrivals = rx.wait_for(WAIT, "both events, signed", |a| a.len() >= 2).await;
    let mut ids: Vec<&str> = arrivals.iter().map(|a| a.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["evt_tls_http", "evt_tls_stream"]);
    hookd.stop().await;
}
