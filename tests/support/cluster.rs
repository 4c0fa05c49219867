//! A real Redis Cluster for tests: three masters with one replica each,
//! six `redis-server` processes on free loopback ports, each with a temp
//! dir of its own, an append-only file fsynced on every write
//! (`appendfsync always`) and a short node timeout (1 s), so a killed
//! master's replica is promoted within a few seconds. Every process is
//! killed on drop.

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, read_reply};

/// `cluster-node-timeout`: how long a master may be unreachable before
/// its replica takes over (plus the election, about as long again).
pub const NODE_TIMEOUT: Duration = Duration::from_millis(1000);

/// How long forming the cluster, or a failover, may take.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);

/// One `redis-server` of the cluster.
struct Node {
    /// Its client port.
    port: u16,
    /// Its working directory (AOF, `nodes.conf`, log).
    dir: tempfile::TempDir,
    /// The process, until killed.
    child: Option<Child>,
}

/// A line of `CLUSTER NODES`, as one node sees another.
#[derive(Clone, Debug)]
pub struct NodeLine {
    /// The node's id.
    pub id: String,
    /// Its client port.
    pub port: u16,
    /// `master`, `slave`, `fail`, `fail?`, `myself`, … as listed.
    pub flags: Vec<String>,
    /// The id of its master, if a replica.
    pub master: Option<String>,
    /// The slot ranges it serves (`a-b` or `a`), if a master.
    pub slots: Vec<(u16, u16)>,
}

impl NodeLine {
    pub fn is_master(&self) -> bool {
        self.flags.iter().any(|f| f == "master")
    }

    /// Marked failed (or suspected) by the node that listed it.
    pub fn is_failing(&self) -> bool {
        self.flags.iter().any(|f| f == "fail" || f == "fail?")
    }

    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| a <= slot && slot <= b)
    }
}

/// Three masters and three replicas on loopback; see the module docs.
pub struct RedisCluster {
    nodes: Vec<Node>,
}

/// Runs one command on the node at `port`, or `None` if it cannot be
/// reached (a killed node).
pub fn try_command(port: u16, args: &[&str]) -> Option<String> {
    let stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    (&stream).write_all(request.as_bytes()).ok()?;
    read_reply(&mut BufReader::new(stream)).ok()
}

/// Parses a `CLUSTER NODES` reply.
fn parse_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = fields[1]
                .split('@')
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            let slots = fields
                .iter()
                .skip(8)
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| {
                    let (a, b) = s.split_once('-').unwrap_or((s, s));
                    Some((a.parse().ok()?, b.parse().ok()?))
                })
                .collect();
            NodeLine {
                id: fields[0].to_owned(),
                port,
                flags: fields[2].split(',').map(str::to_owned).collect(),
                master: (fields[3] != "-").then(|| fields[3].to_owned()),
                slots,
            }
        })
        .collect()
}

/// Waits until `check` holds, polling every 20 ms, or panics naming `what`
/// with the last state `check` explained.
fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(()) => return,
            Err(last) if Instant::now() > deadline => panic!("timed out after {limit:?} waiting for {what}: {last}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

impl RedisCluster {
    /// Starts six nodes, makes them a cluster with `redis-cli --cluster
    /// create … --cluster-replicas 1`, and waits until every node says
    /// `cluster_state:ok` and every replica is in sync with its master.
    pub fn start() -> RedisCluster {
        let mut cluster = RedisCluster { nodes: Vec::new() };
        for _ in 0..6 {
            cluster.nodes.push(Node::start());
        }
        let addresses: Vec<String> = cluster.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli not found: it comes with the redis-server package (apt-get install redis-server)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_ok();
        cluster
    }

    /// The client ports of the nodes still running.
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// `redis://127.0.0.1:<port>` of a node still running: a seed.
    pub fn seed_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.live_ports()[0])
    }

    /// `CLUSTER NODES` as a running node sees the cluster.
    pub fn nodes(&self) -> Vec<NodeLine> {
        for port in self.live_ports() {
            if let Some(text) = try_command(port, &["CLUSTER", "NODES"]) {
                if !text.starts_with('-') {
                    return parse_nodes(&text);
                }
            }
        }
        panic!("no node of the cluster answers CLUSTER NODES");
    }

    /// Runs one command on the node at `port`.
    pub fn command(&self, port: u16, args: &[&str]) -> String {
        try_command(port, args).unwrap_or_else(|| panic!("the cluster node on port {port} does not answer"))
    }

    /// The slot of `key` (its hash tag's, if it has one).
    pub fn slot_of(&self, key: &str) -> u16 {
        let port = self.live_ports()[0];
        self.command(port, &["CLUSTER", "KEYSLOT", key])
            .parse()
            .expect("CLUSTER KEYSLOT answers a number")
    }

    /// The port of the master serving `slot`, as the cluster sees it now.
    pub fn master_of_slot(&self, slot: u16) -> u16 {
        self.nodes()
            .into_iter()
            .find(|n| n.is_master() && !n.is_failing() && n.serves(slot))
            .unwrap_or_else(|| panic!("no master serves slot {slot}"))
            .port
    }

    /// The port of the master holding `key`.
    pub fn master_of_key(&self, key: &str) -> u16 {
        self.master_of_slot(self.slot_of(key))
    }

    /// The ports of the masters, in the order of the slots they serve.
    pub fn masters(&self) -> Vec<u16> {
        let mut masters: Vec<NodeLine> = self
            .nodes()
            .into_iter()
            .filter(|n| n.is_master() && !n.is_failing() && !n.slots.is_empty())
            .collect();
        masters.sort_by_key(|n| n.slots[0].0);
        masters.into_iter().map(|n| n.port).collect()
    }

    /// The port of the replica of the master at `port`.
    pub fn replica_of(&self, port: u16) -> u16 {
        let nodes = self.nodes();
        let master = nodes
            .iter()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node on port {port}"));
        nodes
            .iter()
            .find(|n| n.master.as_deref() == Some(master.id.as_str()))
            .unwrap_or_else(|| panic!("the master on port {port} has no replica"))
            .port
    }

    /// Kills the node at `port` with SIGKILL: nothing it holds in memory
    /// only survives, and its replica learns of it only by timeout.
    pub fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node on port {port}"));
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Cuts the replica at `port` off its master and keeps it off: it is
    /// given a wrong `masterauth` (its master has no password, so the
    /// handshake fails) and its link is dropped. Its master goes on taking
    /// writes (replication is asynchronous) that the replica never gets;
    /// the cluster bus is untouched, so it may still be promoted.
    pub fn cut_replication(&self, port: u16) {
        let set = self.command(port, &["CONFIG", "SET", "masterauth", "not-the-password"]);
        assert_eq!(set, "OK", "CONFIG SET masterauth: {set}");
        self.command(port, &["CLIENT", "KILL", "TYPE", "master"]);
        wait_until(Duration::from_secs(10), "the replica's link to go down", || {
            let info = try_command(port, &["INFO", "replication"]).unwrap_or_default();
            if info.contains("master_link_status:down") {
                Ok(())
            } else {
                Err("still up".into())
            }
        });
    }

    /// Waits until the node at `replica` serves as a master (its own
    /// `CLUSTER NODES` says `myself,master` and it has slots) and every
    /// running node says `cluster_state:ok`; returns how long it took.
    pub fn wait_for_promotion(&self, replica: u16) -> Duration {
        let started = Instant::now();
        wait_until(CLUSTER_TIMEOUT, "the replica's promotion", || {
            let text = try_command(replica, &["CLUSTER", "NODES"]).ok_or("the replica does not answer")?;
            let me = parse_nodes(&text)
                .into_iter()
                .find(|n| n.flags.iter().any(|f| f == "myself"))
                .ok_or("no myself line")?;
            if !me.is_master() || me.slots.is_empty() {
                return Err(format!("still {:?}", me.flags));
            }
            self.all_ok()
        });
        started.elapsed()
    }

    /// Every running node says `cluster_state:ok`.
    fn all_ok(&self) -> Result<(), String> {
        for port in self.live_ports() {
            let info = try_command(port, &["CLUSTER", "INFO"]).unwrap_or_default();
            if !info.contains("cluster_state:ok") {
                return Err(format!("node {port} is not ok yet"));
            }
        }
        Ok(())
    }

    /// Waits until every node is `cluster_state:ok`, each of the three
    /// masters has a replica whose link is up, and the replicas have every
    /// write of their masters.
    fn wait_ok(&self) {
        wait_until(CLUSTER_TIMEOUT, "the cluster to form", || {
            self.all_ok()?;
            let nodes = self.nodes();
            let masters: Vec<&NodeLine> = nodes.iter().filter(|n| n.is_master() && !n.slots.is_empty()).collect();
            if masters.len() != 3 {
                return Err(format!("{} masters with slots", masters.len()));
            }
            for master in masters {
                let replica = nodes
                    .iter()
                    .find(|n| n.master.as_deref() == Some(master.id.as_str()))
                    .ok_or(format!("master {} has no replica yet", master.port))?;
                let info = try_command(replica.port, &["INFO", "replication"]).unwrap_or_default();
                if !info.contains("master_link_status:up") {
                    return Err(format!("replica {} is not linked yet", replica.port));
                }
                let offset = |text: &str, field: &str| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(field))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                };
                let master_info = try_command(master.port, &["INFO", "replication"]).unwrap_or_default();
                let (Some(ours), Some(theirs)) = (
                    offset(&master_info, "master_repl_offset:"),
                    offset(&info, "slave_repl_offset:"),
                ) else {
                    return Err("no replication offsets yet".into());
                };
                if theirs < ours {
                    return Err(format!("replica {} is behind ({theirs} < {ours})", replica.port));
                }
            }
            Ok(())
        });
    }
}

impl Node {
    /// Starts one cluster-enabled node on free ports (the client port and
    /// the cluster bus port, chosen apart since `port + 10000` may not be
    /// free or valid) and waits until it answers PING.
    fn start() -> Node {
        let mut last = String::new();
        for _ in 0..5 {
            let mut node = Node {
                port: free_port(),
                dir: tempfile::tempdir().expect("cannot create a temp dir for redis-server"),
                child: None,
            };
            match node.spawn(free_port()) {
                Ok(()) => return node,
                Err(e) => last = e,
            }
        }
        panic!("{last}");
    }

    fn spawn(&mut self, bus: u16) -> Result<(), String> {
        let port = self.port.to_string();
        let bus = bus.to_string();
        let timeout = NODE_TIMEOUT.as_millis().to_string();
        let dir = self.dir.path().to_str().ok_or("temp dir path is not UTF-8")?.to_owned();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--dir", &dir, "--logfile", "redis.log", "--daemonize", "no"])
            .args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
            .args(["--cluster-port", &bus, "--cluster-node-timeout", &timeout])
            .args(["--cluster-announce-ip", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start redis-server: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                let log = std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
                return Err(format!("redis-server on port {port} exited at start ({status}): {log}"));
            }
            if try_command(self.port, &["PING"]).as_deref() == Some("PONG") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("redis-server on port {port} did not answer PING"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
