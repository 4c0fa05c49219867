//! Shared harness of the integration tests: a real `redis-server` per test
//! (or a six-node Redis Cluster, [`cluster::RedisCluster`]), unique key
//! prefixes, and test configurations.
//!
//! Each test crate that says `mod support;` uses only part of this.
#![allow(dead_code)]

pub mod browser;
pub mod cluster;
pub mod daemon;
pub mod interop;
pub mod plugins;
pub mod postgres;
pub mod receiver;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hookd::config::{Config, QueueConfig, Secret};

/// How long a starting or stopping `redis-server` may take.
const SERVER_TIMEOUT: Duration = Duration::from_secs(10);

/// A `redis-server` of its own on a free loopback port, with its data in a
/// temporary directory (append-only file on, snapshots off). Killed on drop.
pub struct RedisServer {
    /// The port it listens on; kept across restarts.
    port: u16,
    /// Its working directory: AOF, log, cluster config. Kept across restarts.
    dir: tempfile::TempDir,
    /// The running process, if started.
    child: Option<Child>,
    /// Started as a one-node Redis Cluster owning every slot.
    cluster: bool,
    /// Started without persistence (no AOF, no snapshots): a restart
    /// comes back empty.
    volatile: bool,
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

impl RedisServer {
    /// Starts a plain Redis and waits until it answers PING.
    pub fn start() -> RedisServer {
        Self::launch(false)
    }

    /// Starts a one-node Redis Cluster that owns all 16384 slots.
    pub fn start_cluster() -> RedisServer {
        Self::launch(true)
    }

    /// Starts a plain Redis without persistence (`--appendonly no --save
    /// ""`), as a cache is often run: [`RedisServer::restart_empty`] brings
    /// it back with nothing.
    pub fn start_volatile() -> RedisServer {
        Self::launch_with(false, true)
    }

    fn launch(cluster: bool) -> RedisServer {
        Self::launch_with(cluster, false)
    }

    fn launch_with(cluster: bool, volatile: bool) -> RedisServer {
        let mut last = String::new();
        for _ in 0..5 {
            let mut server = RedisServer {
                port: free_port(),
                dir: tempfile::tempdir().expect("cannot create a temp dir for redis-server"),
                child: None,
                cluster,
                volatile,
            };
            match server.spawn() {
                Ok(()) => return server,
                // Most likely someone took the port between probe and bind.
                Err(e) => last = e,
            }
        }
        panic!("{last}");
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops it cleanly (SHUTDOWN flushes the append-only file) and starts
    /// it again on the same port and directory.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn() {
            panic!("redis-server did not come back on port {}: {e}", self.port);
        }
    }

    /// Kills it (SIGKILL, nothing flushed), empties its directory and
    /// starts it again on the same port: Redis as it comes back after a
    /// crash when nothing was persisted.
    pub fn restart_empty(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for entry in std::fs::read_dir(self.dir.path()).expect("read the redis-server dir") {
            let path = entry.expect("a dir entry").path();
            if path.file_name().is_some_and(|n| n != "redis.log") {
                if path.is_dir() {
                    std::fs::remove_dir_all(&path).expect("empty the redis-server dir");
                } else {
                    std::fs::remove_file(&path).expect("empty the redis-server dir");
                }
            }
        }
        if let Err(e) = self.spawn() {
            panic!("redis-server did not come back on port {}: {e}", self.port);
        }
    }

    /// Sends one command and returns the reply rendered as text (errors
    /// start with `-`, nil is `(nil)`, arrays are one item per line).
    pub fn command(&self, args: &[&str]) -> String {
        redis_command(self.port, args)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        let dir = self.dir.path().to_str().ok_or("temp dir path is not UTF-8")?.to_owned();
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            if self.volatile { "no" } else { "yes" },
        ])
        .args(["--dir", &dir, "--logfile", "redis.log", "--daemonize", "no"]);
        if self.cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
                .args(["--cluster-announce-ip", "127.0.0.1"]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => "redis-server not found: the integration tests need a real Redis; \
                     install it with apt-get install redis-server"
                    .to_string(),
                _ => format!("cannot start redis-server: {e}"),
            })?;
        self.child = Some(child);
        self.wait_for_pong()?;
        if self.cluster {
            let info = self.command(&["CLUSTER", "INFO"]);
            if !info.contains("cluster_slots_assigned:16384") {
                let added = self.command(&["CLUSTER", "ADDSLOTSRANGE", "0", "16383"]);
                if added.starts_with('-') {
                    return Err(format!("CLUSTER ADDSLOTSRANGE failed: {added}"));
                }
            }
            let deadline = Instant::now() + SERVER_TIMEOUT;
            while !self.command(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                if Instant::now() > deadline {
                    return Err("the one-node cluster never reached cluster_state:ok".into());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    fn wait_for_pong(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + SERVER_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "redis-server on port {} exited at start ({status}); its log:\n{}",
                        self.port,
                        self.log_tail()
                    ));
                }
            }
            if let Ok(stream) = TcpStream::connect(("127.0.0.1", self.port)) {
                stream.set_read_timeout(Some(Duration::from_secs(1))).ok();
                let mut reader = BufReader::new(&stream);
                if (&stream).write_all(b"PING\r\n").is_ok() {
                    let mut line = String::new();
                    // LOADING replies mean it is still reading its AOF.
                    if reader.read_line(&mut line).is_ok() && line.starts_with("+PONG") {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "redis-server on port {} did not answer PING within {SERVER_TIMEOUT:?}; its log:\n{}",
                    self.port,
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(stream) = TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = (&stream).write_all(b"SHUTDOWN\r\n");
        }
        let deadline = Instant::now() + SERVER_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Holds the redis-server at `port` busy in a script for `ms` (Redis runs
/// one command at a time, so every other client waits), from a blocking
/// thread; returns once Redis is seen busy, with a handle that ends with
/// the script.
///
/// The script's bytes are written before Redis is probed, so a PING that
/// goes unanswered on a fresh connection (which Redis accepts after it has
/// read the script) means the script runs, or will before anything the test
/// sends next; a loaded machine cannot make the probe race ahead of it.
pub async fn stall_redis(port: u16, ms: u64) -> tokio::task::JoinHandle<()> {
    let (sent, written) = std::sync::mpsc::channel();
    let busy = tokio::task::spawn_blocking(move || {
        let script = format!(
            "local a = redis.call('TIME') local s = a[1] * 1000000 + a[2] \
             while true do local t = redis.call('TIME') \
             if t[1] * 1000000 + t[2] - s > {ms} * 1000 then return 1 end end"
        );
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("cannot connect to the test redis-server");
        stream
            .set_read_timeout(Some(SERVER_TIMEOUT + Duration::from_millis(ms)))
            .ok();
        let request = format!("*3\r\n$4\r\nEVAL\r\n${}\r\n{script}\r\n$1\r\n0\r\n", script.len());
        (&stream)
            .write_all(request.as_bytes())
            .expect("cannot write to the test redis-server");
        sent.send(()).ok();
        let reply = read_reply(&mut BufReader::new(stream)).expect("no reply from the test redis-server");
        assert_eq!(reply, "1", "the stalling script ran");
    });
    let written = tokio::task::spawn_blocking(move || written.recv_timeout(SERVER_TIMEOUT).is_ok());
    assert!(written.await.unwrap(), "the stalling script was never written");
    let deadline = Instant::now() + SERVER_TIMEOUT;
    loop {
        let answered = tokio::task::spawn_blocking(move || {
            let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) else {
                return true;
            };
            stream.set_read_timeout(Some(Duration::from_millis(300))).ok();
            let mut line = String::new();
            (&stream).write_all(b"PING\r\n").is_ok() && BufReader::new(&stream).read_line(&mut line).is_ok()
        })
        .await
        .unwrap();
        if !answered {
            return busy;
        }
        assert!(
            !busy.is_finished(),
            "the stalling script ended before Redis was seen busy"
        );
        assert!(Instant::now() < deadline, "redis-server on port {port} never got busy");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs one command on the redis-server at `port` on loopback, as
/// [`RedisServer::command`] does.
pub fn redis_command(port: u16, args: &[&str]) -> String {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("cannot connect to the test redis-server");
    stream.set_read_timeout(Some(SERVER_TIMEOUT)).ok();
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    (&stream)
        .write_all(request.as_bytes())
        .expect("cannot write to the test redis-server");
    read_reply(&mut BufReader::new(stream)).expect("no reply from the test redis-server")
}

/// Reads one RESP2 reply and renders it as text.
fn read_reply(reader: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at(line.len().min(1));
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad RESP line {line:?}"));
    match kind {
        "+" | ":" => Ok(rest.to_owned()),
        "-" => Ok(line.to_owned()),
        "$" => {
            let len: i64 = rest.parse().map_err(|_| bad())?;
            if len < 0 {
                return Ok("(nil)".into());
            }
            let mut body = vec![0; len as usize + 2];
            reader.read_exact(&mut body)?;
            body.truncate(len as usize);
            Ok(String::from_utf8_lossy(&body).into_owned())
        }
        "*" => {
            let len: i64 = rest.parse().map_err(|_| bad())?;
            let items = (0..len.max(0))
                .map(|_| read_reply(reader))
                .collect::<std::io::Result<Vec<_>>>()?;
            Ok(items.join("\n"))
        }
        _ => Err(bad()),
    }
}

/// Where a conformance test's store keeps its data, kept alive for the
/// whole test: one per backend the suites run against.
pub enum Home {
    /// A redis-server of its own.
    Redis(RedisServer),
    /// A temp dir for the embedded store.
    Embedded {
        /// Removed when the test ends.
        _dir: tempfile::TempDir,
    },
}

impl Home {
    /// A plain Redis of its own, and a queue configuration using it with a
    /// key prefix made from `name`.
    pub fn redis(name: &str) -> (QueueConfig, Home) {
        let server = RedisServer::start();
        let config = queue_config(&unique_prefix(name), Some(&server.url()), server.dir());
        (config, Home::Redis(server))
    }

    /// A one-node Redis Cluster of its own, and a queue configuration
    /// using it.
    pub fn redis_cluster(name: &str) -> (QueueConfig, Home) {
        let server = RedisServer::start_cluster();
        let mut config = queue_config(&unique_prefix(name), Some(&server.url()), server.dir());
        config.cluster = true;
        (config, Home::Redis(server))
    }

    /// A temp dir, and a queue configuration keeping the embedded store in
    /// it.
    pub fn embedded(name: &str) -> (QueueConfig, Home) {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = queue_config(&unique_prefix(name), None, &dir.path().join("store"));
        (config, Home::Embedded { _dir: dir })
    }

    /// Restarts Redis from its append-only file; the embedded store's file
    /// needs nothing. Call it with the store closed.
    pub fn restart(&mut self) {
        if let Home::Redis(server) = self {
            server.restart();
        }
    }
}

/// A key prefix no other test (or test run) uses: `t<pid>_<n>_<name>`.
pub fn unique_prefix(name: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' })
        .collect();
    format!(
        "t{}_{}_{clean}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The default configuration, as a test starts from.
pub fn test_config() -> Config {
    Config::from_toml("").expect("the compiled-in defaults are valid")
}

/// A queue configuration for a test: the defaults, with this key prefix and
/// data directory, and Redis at `redis_url` if given (embedded otherwise).
pub fn queue_config(prefix: &str, redis_url: Option<&str>, data_dir: &Path) -> QueueConfig {
    let mut queue = test_config().queue;
    queue.key_prefix = prefix.to_owned();
    queue.redis_url = redis_url.map(Secret::new);
    queue.data_dir = data_dir.to_owned();
    queue
}
