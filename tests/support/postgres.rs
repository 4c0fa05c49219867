//! A real PostgreSQL server of a test's own: Debian's `postgresql`
//! binaries, a fresh data directory made by `initdb`, listening on a free
//! loopback port, run as an unprivileged user (PostgreSQL refuses to run
//! as root: under root, as `postgres`, or `nobody` without it).
//!
//! [`PostgresServer::start_tls`] serves TLS with a certificate for
//! `localhost` and 127.0.0.1 signed by a [`TestCa`] of the test's own, and
//! can refuse plain text itself (`hostssl` lines only in `pg_hba.conf`).

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

/// A certificate authority of a test's own, made with rcgen.
pub struct TestCa {
    /// Its certificate and key, to sign servers' certificates.
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    /// A fresh CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("hookd test CA {name}"));
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let key = rcgen::KeyPair::generate().unwrap();
        TestCa {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    /// Its certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes its certificate to `dir/<file>` and returns the path.
    pub fn write(&self, dir: &Path, file: &str) -> PathBuf {
        let path = dir.join(file);
        std::fs::write(&path, self.pem()).expect("write the CA certificate");
        path
    }

    /// A server certificate for `localhost` and 127.0.0.1 that it signs:
    /// the certificate and the key, PEM.
    pub fn server(&self) -> (String, String) {
        self.server_for(&["localhost", "127.0.0.1"])
    }

    /// A server certificate for `names` (host names or addresses) that it
    /// signs: the certificate and the key, PEM.
    pub fn server_for(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names.clone()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, &names[0]);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// How a [`PostgresServer`] serves TLS.
pub struct ServerTls {
    /// `server.crt`: PEM certificate (chain).
    pub cert: String,
    /// `server.key`: its PEM private key.
    pub key: String,
    /// `pg_hba.conf` with `hostssl` lines only: plain text connections
    /// are refused by the server itself.
    pub hostssl_only: bool,
}

impl ServerTls {
    /// A certificate signed by `ca`, plain text still allowed.
    pub fn signed_by(ca: &TestCa) -> ServerTls {
        let (cert, key) = ca.server();
        ServerTls {
            cert,
            key,
            hostssl_only: false,
        }
    }

    /// A certificate for `names` only, signed by `ca`.
    pub fn for_names(ca: &TestCa, names: &[&str]) -> ServerTls {
        let (cert, key) = ca.server_for(names);
        ServerTls {
            cert,
            key,
            hostssl_only: false,
        }
    }

    /// The same, plain text refused by the server.
    pub fn only(self) -> ServerTls {
        ServerTls {
            hostssl_only: true,
            ..self
        }
    }
}

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
        Self::launch(None)
    }

    /// [`start`](Self::start), serving TLS as `tls` says (`ssl = on`,
    /// `server.crt` and `server.key` in the data directory).
    pub fn start_tls(tls: ServerTls) -> PostgresServer {
        Self::launch(Some(tls))
    }

    fn launch(tls: Option<ServerTls>) -> PostgresServer {
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
        if let Some(tls) = &tls {
            server.serve_tls(tls);
        }
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

    /// Writes `tls`'s certificate and key into the data directory (the
    /// key 0600 and, as everything there, the server's user's), turns
    /// `ssl` on, and with [`ServerTls::hostssl_only`] leaves `pg_hba.conf`
    /// only `hostssl` lines. Takes effect at the next start.
    pub fn serve_tls(&self, tls: &ServerTls) {
        use std::os::unix::fs::PermissionsExt;
        let data = self.data();
        for (file, text, mode) in [("server.crt", &tls.cert, 0o644), ("server.key", &tls.key, 0o600)] {
            let path = data.join(file);
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            if let Some((uid, gid)) = self.owner {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
            }
        }
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("read postgresql.conf");
        if !text.contains("# hookd tests: TLS") {
            text.push_str(
                "\n# hookd tests: TLS\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
            );
            std::fs::write(&conf, text).expect("write postgresql.conf");
        }
        if tls.hostssl_only {
            let hba = "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n";
            std::fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        }
    }

    /// `postgres://hookd@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        self.url_at("127.0.0.1")
    }

    /// `postgres://hookd@<host>:<port>/postgres`: the server by another
    /// name (`localhost`), as a certificate is checked against it.
    pub fn url_at(&self, host: &str) -> String {
        format!("postgres://{USER}@{host}:{}/postgres", self.port)
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
        // Its own home: libpq looks for a client certificate under
        // ~/.postgresql, which the server's user may not read in root's.
        cmd.current_dir(self.dir.path())
            .env("HOME", self.dir.path())
            .stdin(Stdio::null());
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
