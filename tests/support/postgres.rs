//! A real PostgreSQL server of a test's own: Debian's `postgresql`
//! binaries, a fresh data directory made by `initdb`, listening on a free
//! loopback port, run as an unprivileged user (PostgreSQL refuses to run
//! as root: under root, as `postgres`, or `nobody` without it).

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// How long a starting or stopping server may take.
const PG_TIMEOUT: Duration = Duration::from_secs(30);

/// The database role the tests connect as (trusted, no password).
pub const USER: &str = "hookd";

/// A PostgreSQL server on a free loopback port, its data in a temporary
/// directory. Stopped (immediately) on drop.
pub struct PostgresServer {
    /// The port it listens on; kept across restarts.
    port: u16,
    /// Holds the data directory (`data/`) and the server's log.
    dir: tempfile::TempDir,
    /// The running `postgres`, if started.
    child: Option<Child>,
    /// The user and group the server runs as when the tests run as root.
    owner: Option<(u32, u32)>,
}

/// The directory of Debian's PostgreSQL binaries (`initdb` is not on the
/// PATH there): the newest `/usr/lib/postgresql/<version>/bin`, else
/// wherever `initdb` is on the PATH.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .find(|dir| dir.join("initdb").exists());
    found.unwrap_or_else(|| {
        panic!("PostgreSQL's initdb not found: the tests need a real PostgreSQL; install it with apt-get install postgresql")
    })
}

/// Under root: the uid and gid of `postgres`, or of `nobody`.
fn unprivileged() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    for name in [c"postgres", c"nobody"] {
        // SAFETY: `name` is a valid C string; the returned record is read
        // at once, before any other getpw* call.
        let entry = unsafe { libc::getpwnam(name.as_ptr()) };
        if !entry.is_null() {
            // SAFETY: non-null, points at libc's static record.
            let entry = unsafe { &*entry };
            return Some((entry.pw_uid, entry.pw_gid));
        }
    }
    panic!("running as root, and neither a `postgres` nor a `nobody` user to run PostgreSQL as")
}

impl PostgresServer {
    /// Makes a fresh cluster with `initdb` and starts it; waits until it
    /// accepts connections.
    pub fn start() -> PostgresServer {
        let dir = tempfile::tempdir().expect("cannot create a temp dir for PostgreSQL");
        let owner = unprivileged();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown the PostgreSQL dir");
        }
        let mut server = PostgresServer {
            port: 0,
            dir,
            child: None,
            owner,
        };
        let out = server
            .command("initdb")
            .args([
                "--no-sync",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--username",
                USER,
            ])
            .arg("--pgdata")
            .arg(server.data())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut last = String::new();
        for _ in 0..5 {
            server.port = free_port();
            match server.spawn() {
                Ok(()) => return server,
                // Most likely someone took the port between probe and bind.
                Err(e) => last = e,
            }
        }
        panic!("{last}");
    }

    /// `postgres://hookd@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/postgres", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A command of PostgreSQL's bin directory, run as the server's user.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(bin_dir().join(program));
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        cmd.current_dir(self.dir.path()).stdin(Stdio::null());
        cmd
    }

    /// A client program of PostgreSQL's, pointed at the `postgres`
    /// database as [`USER`].
    fn client(&self, program: &str) -> Command {
        let mut cmd = self.command(program);
        let port = self.port.to_string();
        cmd.args(["-h", "127.0.0.1", "-p", &port, "-U", USER, "-d", "postgres"]);
        cmd
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::File::create(self.dir.path().join("postgres.log")).map_err(|e| e.to_string())?;
        if let Some((uid, gid)) = self.owner {
            let path = self.dir.path().join("postgres.log");
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
        }
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .args(["-c", "listen_addresses=127.0.0.1", "-p", &self.port.to_string()])
            .args(["-c", "unix_socket_directories=", "-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=200"])
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start postgres: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + PG_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                return Err(format!(
                    "postgres exited ({status}) on port {}: {}",
                    self.port,
                    self.log()
                ));
            }
            let ready = self
                .command("pg_isready")
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER, "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "postgres on port {} never got ready: {}",
                    self.port,
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// Stops it with a fast shutdown (SIGINT: connections are cut,
    /// everything committed is kept) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: a plain signal to our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let deadline = Instant::now() + PG_TIMEOUT;
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.wait();
            // The port is free once nothing answers on it.
            while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts it again on the same port and data after [`stop`](Self::stop).
    pub fn start_again(&mut self) {
        if let Err(e) = self.spawn() {
            panic!("postgres did not come back on port {}: {e}", self.port);
        }
    }

    /// Stops and starts it again.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Runs `sql` with `psql` and returns its unaligned, tuples-only output
    /// (`|` between columns, one row a line).
    pub fn sql(&self, sql: &str) -> String {
        let out = self
            .client("psql")
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql `{sql}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
    }

    /// Every row of every table, as `pg_dump --data-only` prints them.
    pub fn dump(&self) -> String {
        let out = self
            .client("pg_dump")
            .args(["--data-only", "--no-owner"])
            .output()
            .expect("run pg_dump");
        assert!(
            out.status.success(),
            "pg_dump failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Its temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // An immediate shutdown: the data is thrown away with the dir.
            // SAFETY: a plain signal to our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGQUIT) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
