//! Notification emails against a real SMTP server on loopback: aiosmtpd
//! (`tests/support/smtp_sink.py`, Debian's `python3-aiosmtpd`), which writes
//! every message it accepts to a directory that the tests read back.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use hookd::config::{Config, SubscriptionName};
use hookd::ingest::EventId;
use hookd::notify::{Notification, Notifier};
use hookd::queue::DeliveryId;
use hookd::telemetry::Metrics;
use support::receiver::SECRET;
use tokio_util::sync::CancellationToken;

/// How long a mail may take to arrive once its digest window has closed.
const ARRIVAL: Duration = Duration::from_secs(10);
/// A last error longer than a mail line, so the body is quoted-printable.
const LONG_ERROR: &str = "endpoint answered 503 Service Unavailable: upstream connect error or disconnect/reset before headers; reset reason: connection failure";
/// The digest window the tests use.
const WINDOW: &str = "300ms";

/// An aiosmtpd server of its own on a loopback port; killed on drop.
struct SmtpSink {
    /// Where it listens.
    port: u16,
    /// Where it writes messages (and its own stderr).
    dir: tempfile::TempDir,
    /// The Python process.
    child: Child,
}

/// One message the sink accepted.
#[derive(Debug)]
struct Mail {
    /// Envelope sender.
    mail_from: String,
    /// Envelope recipients.
    rcpt_tos: Vec<String>,
    /// The user that authenticated, if any.
    user: Option<String>,
    /// The message as received.
    raw: String,
}

impl Mail {
    /// A header's value, unfolded; `None` if absent.
    fn header(&self, name: &str) -> Option<String> {
        let head = self.raw.split("\r\n\r\n").next().unwrap_or_default();
        let mut found: Option<String> = None;
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                if let Some(value) = found.as_mut() {
                    value.push_str(line);
                }
                continue;
            }
            if found.is_some() {
                break;
            }
            if let Some((key, value)) = line.split_once(':') {
                if key.eq_ignore_ascii_case(name) {
                    found = Some(value.trim().to_owned());
                }
            }
        }
        found
    }

    /// The body, decoded (7bit or quoted-printable), line ends as `\n`.
    fn body(&self) -> String {
        let body = self.raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
        let qp = self
            .header("Content-Transfer-Encoding")
            .is_some_and(|e| e.eq_ignore_ascii_case("quoted-printable"));
        if !qp {
            return body.replace("\r\n", "\n");
        }
        let joined = body.replace("=\r\n", "");
        let bytes = joined.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
                (b'=', Some(byte)) => {
                    out.push(byte);
                    i += 3;
                }
                (b, _) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).replace("\r\n", "\n")
    }
}

/// The Python that has aiosmtpd: Debian's (`python3-aiosmtpd`) lives under
/// /usr/bin, which another `python3` earlier in PATH may shadow.
fn python() -> &'static str {
    let debian = "/usr/bin/python3";
    let has_aiosmtpd = |python: &str| {
        Command::new(python)
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if Path::new(debian).exists() && has_aiosmtpd(debian) {
        debian
    } else if has_aiosmtpd("python3") {
        "python3"
    } else {
        panic!("the notification tests need aiosmtpd: apt-get install python3-aiosmtpd (tests/run.sh does)")
    }
}

impl SmtpSink {
    /// A sink on a free port, without authentication.
    fn start() -> SmtpSink {
        Self::start_on(support::free_port(), None)
    }

    /// A sink on `port`, requiring `auth` (user, password) if given.
    fn start_on(port: u16, auth: Option<(&str, &str)>) -> SmtpSink {
        let dir = tempfile::tempdir().expect("cannot create a temp dir for the SMTP sink");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_sink.py");
        let stderr = std::fs::File::create(dir.path().join("sink.log")).expect("cannot create the sink's log");
        let mut cmd = Command::new(python());
        cmd.arg(&script).arg(port.to_string()).arg(dir.path());
        if let Some((user, password)) = auth {
            cmd.args([user, password]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("cannot start the SMTP sink");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        BufReader::new(stdout).read_line(&mut line).ok();
        if line.trim() != "ready" {
            let _ = child.kill();
            let log = std::fs::read_to_string(dir.path().join("sink.log")).unwrap_or_default();
            panic!("the SMTP sink did not start on port {port}:\n{log}");
        }
        SmtpSink { port, dir, child }
    }

    /// Every message accepted so far, in order.
    fn mails(&self) -> Vec<Mail> {
        let mut metas: Vec<_> = std::fs::read_dir(self.dir.path())
            .expect("the sink's directory")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        metas.sort();
        metas
            .iter()
            .map(|meta| {
                let m: serde_json::Value = serde_json::from_slice(&std::fs::read(meta).unwrap()).unwrap();
                let raw = std::fs::read(meta.with_extension("eml")).unwrap();
                Mail {
                    mail_from: m["mail_from"].as_str().unwrap_or_default().to_owned(),
                    rcpt_tos: m["rcpt_tos"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                        .unwrap_or_default(),
                    user: m["user"].as_str().map(str::to_owned),
                    raw: String::from_utf8_lossy(&raw).into_owned(),
                }
            })
            .collect()
    }

    /// Waits until `n` messages have arrived, then a little longer to see
    /// that no more do, and returns them all.
    async fn expect(&self, n: usize) -> Vec<Mail> {
        let deadline = Instant::now() + ARRIVAL;
        while self.mails().len() < n {
            assert!(
                Instant::now() < deadline,
                "expected {n} mails within {ARRIVAL:?}, got {:?}",
                self.mails()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A second digest would come a window later.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let mails = self.mails();
        assert_eq!(mails.len(), n, "{mails:#?}");
        mails
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Log lines written while a test runs, on its own thread (the tests run on
/// the current-thread runtime, so the notifier's task logs here too).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn subscription(name: &str, notify_to: Option<&str>) -> String {
    let notify_to = notify_to.map(|t| format!("notify_to = {t}\n")).unwrap_or_default();
    format!(
        "\n[[subscriptions]]\nname = \"{name}\"\nurl = \"https://{name}.example.com/hooks\"\nevents = [\"*\"]\nsecrets = [\"{SECRET}\"]\n{notify_to}"
    )
}

/// A configuration sending to `port` in plain text, with `extra` keys in
/// `[notify]` and then `subscriptions`.
fn config(port: u16, extra: &str, subscriptions: &str) -> Config {
    let text = format!(
        "[notify]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {port}\nsmtp_tls = \"none\"\nfrom = \"hookd alerts <hookd@example.com>\"\ndigest_window = \"{WINDOW}\"\n{extra}\n{subscriptions}"
    );
    Config::from_toml(&text).unwrap_or_else(|e| panic!("test config: {e}\n{text}"))
}

fn name(n: &str) -> SubscriptionName {
    SubscriptionName::parse(n).unwrap()
}

fn dead(subscription: &str, n: usize) -> Notification {
    Notification::DeliveryDead {
        subscription: name(subscription),
        delivery_id: DeliveryId::parse(&format!("dlv_00{n:032x}")).unwrap(),
        event_id: EventId::parse(&format!("evt_{n}")).unwrap(),
        event_type: "coupon.redeemed".into(),
        attempts: 6,
        error: Some(LONG_ERROR.into()),
        at: Utc::now(),
    }
}

fn disabled(subscription: &str) -> Notification {
    Notification::SubscriptionDisabled {
        subscription: name(subscription),
        reason: "20 consecutive failed attempts".into(),
        at: Utc::now(),
    }
}

struct Running {
    notifier: Notifier,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start(config: &Config) -> Running {
        let metrics = Arc::new(Metrics::new());
        let shutdown = CancellationToken::new();
        let (notifier, task) = Notifier::start(config, metrics.clone(), shutdown.clone()).expect("notifier starts");
        Running {
            notifier,
            metrics,
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the notifier stops after shutdown")
            .expect("the notifier task does not panic");
    }
}

#[tokio::test]
async fn a_digest_mail_has_sender_recipients_subject_and_every_item() {
    let sink = SmtpSink::start_on(support::free_port(), Some(("alerts", "pw-s3cret-77")));
    let config = config(
        sink.port,
        "smtp_username = \"alerts\"\nsmtp_password = \"pw-s3cret-77\"\nto = [\"Ops <ops@example.com>\", \"oncall@example.com\"]",
        &subscription("crm", None),
    );
    let hookd = Running::start(&config);
    assert!(hookd.notifier.is_enabled());
    hookd.notifier.push(disabled("crm"));
    for n in 0..3 {
        hookd.notifier.push(dead("crm", n));
    }

    let mails = sink.expect(1).await;
    let mail = &mails[0];
    assert_eq!(
        mail.user.as_deref(),
        Some("alerts"),
        "authenticated with the configured user"
    );
    assert_eq!(mail.mail_from, "hookd@example.com");
    assert_eq!(mail.rcpt_tos, ["oncall@example.com", "ops@example.com"]);
    assert_eq!(
        mail.header("From").as_deref(),
        Some("\"hookd alerts\" <hookd@example.com>")
    );
    let to = mail.header("To").unwrap();
    assert!(
        to.contains("ops@example.com") && to.contains("oncall@example.com"),
        "{to}"
    );
    assert_eq!(
        mail.header("Subject").as_deref(),
        Some("[hookd] crm: disabled, 3 deliveries dead")
    );
    let body = mail.body();
    assert!(body.contains("\ncrm: disabled, 3 deliveries dead\n"), "{body}");
    assert!(body.contains("crm: subscription disabled"), "{body}");
    assert!(body.contains("reason: 20 consecutive failed attempts"), "{body}");
    for n in 0..3 {
        assert!(body.contains(&format!("delivery: dlv_00{n:032x}")), "{body}");
        assert!(body.contains(&format!("event: evt_{n} (coupon.redeemed)")), "{body}");
    }
    assert!(body.contains(&format!("last error: {LONG_ERROR}\n")), "{body}");
    assert!(body.contains("delivery dead after 6 attempts"), "{body}");
    assert!(
        !mail.raw.contains("pw-s3cret-77"),
        "the SMTP password is never in a mail"
    );
    assert!(!mail.raw.contains(&SECRET[6..]), "signing secrets are never in a mail");

    let metrics = hookd.metrics.render();
    assert!(
        metrics.contains("hookd_notifications_total{kind=\"dead\",result=\"sent\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hookd_notifications_total{kind=\"disabled\",result=\"sent\"} 1"),
        "{metrics}"
    );
    hookd.stop().await;
}

#[tokio::test]
async fn a_burst_of_fifty_dead_deliveries_is_one_mail() {
    let sink = SmtpSink::start();
    let config = config(sink.port, "to = [\"ops@example.com\"]", &subscription("crm", None));
    let hookd = Running::start(&config);
    for n in 0..50 {
        hookd.notifier.push(dead("crm", n));
    }
    let mails = sink.expect(1).await;
    assert_eq!(
        mails[0].header("Subject").as_deref(),
        Some("[hookd] crm: 50 deliveries dead")
    );
    let body = mails[0].body();
    assert_eq!(body.matches("delivery dead after").count(), 50, "{body}");
    assert!(!body.contains("more not listed"), "{body}");

    // The next window makes the next mail.
    hookd.notifier.push(dead("crm", 50));
    let mails = sink.expect(2).await;
    assert_eq!(
        mails[1].header("Subject").as_deref(),
        Some("[hookd] crm: 1 delivery dead")
    );
    hookd.stop().await;
}

#[tokio::test]
async fn each_recipient_list_gets_one_mail_and_notify_to_routes_a_subscription() {
    let sink = SmtpSink::start();
    let subscriptions = [
        subscription("crm", Some("[\"crm-team@example.com\"]")),
        subscription("billing", None),
        // The same list as notify.to: shares its mail.
        subscription("audit", Some("[\"OPS@example.com\"]")),
    ]
    .concat();
    let config = config(sink.port, "to = [\"ops@example.com\"]", &subscriptions);
    let hookd = Running::start(&config);
    hookd.notifier.push(disabled("crm"));
    hookd.notifier.push(dead("billing", 1));
    hookd.notifier.push(dead("crm", 2));
    hookd.notifier.push(dead("audit", 3));

    let mut mails = sink.expect(2).await;
    mails.sort_by(|a, b| a.rcpt_tos.cmp(&b.rcpt_tos));
    let (crm, ops) = (&mails[0], &mails[1]);
    assert_eq!(crm.rcpt_tos, ["crm-team@example.com"]);
    assert_eq!(
        crm.header("Subject").as_deref(),
        Some("[hookd] crm: disabled, 1 delivery dead")
    );
    assert!(
        !crm.body().contains("billing") && !crm.body().contains("audit"),
        "{}",
        crm.body()
    );
    assert_eq!(ops.rcpt_tos, ["ops@example.com"]);
    assert_eq!(
        ops.header("Subject").as_deref(),
        Some("[hookd] audit: 1 delivery dead; billing: 1 delivery dead")
    );
    assert!(!ops.body().contains("crm"), "{}", ops.body());
    hookd.stop().await;
}

#[tokio::test]
async fn no_email_without_smtp_host() {
    let config = Config::from_toml(&format!(
        "[notify]\nto = [\"ops@example.com\"]\n{}",
        subscription("crm", None)
    ))
    .unwrap();
    let hookd = Running::start(&config);
    assert!(!hookd.notifier.is_enabled());
    hookd.notifier.push(dead("crm", 1));
    tokio::time::timeout(Duration::from_secs(5), hookd.task)
        .await
        .expect("with email off the task ends at once")
        .unwrap();
    let text = hookd.metrics.render();
    let counted: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("hookd_notifications_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(counted.is_empty(), "{text}");
}

#[tokio::test]
async fn smtp_down_is_logged_and_retried_until_it_is_back() {
    let logs = Captured::default();
    let _guard = logs.install();
    let port = support::free_port();
    let config = config(port, "to = [\"ops@example.com\"]", &subscription("crm", None));
    let hookd = Running::start(&config);
    hookd.notifier.push(dead("crm", 7));

    // The window closes at 300 ms, the first attempt fails, and the next
    // ones follow 1 s, 2 s, 4 s later: start the server in between.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !logs.text().contains("will retry") {
        assert!(Instant::now() < deadline, "no retry logged:\n{}", logs.text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = logs.text();
    assert!(
        text.contains(&format!("127.0.0.1:{port}")),
        "the log names the server:\n{text}"
    );
    let sink = SmtpSink::start_on(port, None);
    let mails = sink.expect(1).await;
    assert!(mails[0].body().contains("event: evt_7"));
    assert!(logs.text().contains("digest mail sent"), "{}", logs.text());
    hookd.stop().await;
}

#[tokio::test]
async fn a_refused_login_is_logged_without_retry_or_panic() {
    let logs = Captured::default();
    let _guard = logs.install();
    let sink = SmtpSink::start_on(support::free_port(), Some(("alerts", "right")));
    let config = config(
        sink.port,
        "smtp_username = \"alerts\"\nsmtp_password = \"wrong-pw-1\"\nto = [\"ops@example.com\"]",
        &subscription("crm", None),
    );
    let hookd = Running::start(&config);
    hookd.notifier.push(dead("crm", 1));
    let deadline = Instant::now() + ARRIVAL;
    while !hookd
        .metrics
        .render()
        .contains("hookd_notifications_total{kind=\"dead\",result=\"failed\"} 1")
    {
        assert!(Instant::now() < deadline, "no failure counted:\n{}", logs.text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = logs.text();
    assert!(text.contains("refused the digest mail for good"), "{text}");
    assert!(
        !text.contains("will retry"),
        "a permanent refusal is not retried:\n{text}"
    );
    assert!(!text.contains("wrong-pw-1"), "the password is never logged:\n{text}");
    assert!(sink.mails().is_empty());
    hookd.stop().await;
}

#[tokio::test]
async fn pending_digests_are_flushed_at_shutdown() {
    let sink = SmtpSink::start();
    let config = config(sink.port, "to = [\"ops@example.com\"]", &subscription("crm", None));
    // A window far longer than the test: only shutdown sends it.
    let mut config = config;
    config.notify.digest_window = Duration::from_secs(3600);
    let hookd = Running::start(&config);
    hookd.notifier.push(disabled("crm"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(sink.mails().is_empty());
    hookd.stop().await;
    let mails = sink.mails();
    assert_eq!(mails.len(), 1, "{mails:#?}");
    assert_eq!(mails[0].header("Subject").as_deref(), Some("[hookd] crm: disabled"));
}

#[tokio::test]
async fn a_digest_lists_the_first_hundred_items_and_counts_the_rest() {
    let sink = SmtpSink::start();
    let config = config(
        sink.port,
        "to = [\"ops@example.com\"]\nsubject_prefix = \"[hookd prod]\"",
        &subscription("crm", None),
    );
    let hookd = Running::start(&config);
    for n in 0..130 {
        hookd.notifier.push(dead("crm", n));
    }
    let mails = sink.expect(1).await;
    assert_eq!(
        mails[0].header("Subject").as_deref(),
        Some("[hookd prod] crm: 130 deliveries dead")
    );
    let body = mails[0].body();
    assert_eq!(body.matches("delivery dead after").count(), 100, "{body}");
    assert!(body.contains("and 30 more not listed"), "{body}");
    hookd.stop().await;
}

#[tokio::test]
async fn push_never_blocks_and_counts_what_it_cannot_queue() {
    let sink = SmtpSink::start();
    let config = config(sink.port, "to = [\"ops@example.com\"]", &subscription("crm", None));
    let hookd = Running::start(&config);
    let (notifier, metrics) = (hookd.notifier.clone(), hookd.metrics.clone());
    hookd.stop().await;
    // The task is gone: pushes return at once and are counted as dropped.
    let started = Instant::now();
    for n in 0..3 {
        notifier.push(dead("crm", n));
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    let text = metrics.render();
    assert!(
        text.contains("hookd_notifications_total{kind=\"dead\",result=\"dropped\"} 3"),
        "{text}"
    );
}

/// hookd's pieces an [`hookd::notify::Alerts`] needs, on an embedded store
/// with a subscription to `hookd.delivery.dead` and no dispatcher.
struct Pipeline {
    backend: hookd::queue::Backend,
    ingestor: Arc<hookd::ingest::Ingestor>,
    notifier: Notifier,
    _dir: tempfile::TempDir,
}

impl Pipeline {
    async fn start() -> Pipeline {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[queue]\ndata_dir = {:?}\n[delivery]\ndispatch = false\n\
             [[subscriptions]]\nname = \"ops\"\nurl = \"https://ops.example.com/hooks\"\nevents = [\"hookd.delivery.dead\"]\nsecrets = [\"{SECRET}\"]\n",
            dir.path().display().to_string()
        );
        let config = Config::from_toml(&text).unwrap();
        let backend = hookd::open_queue(&config).await.unwrap();
        let history = hookd::open_history(&config).await.unwrap();
        let spool = hookd::history::Spool::open(dir.path(), 1 << 20, 1 << 20);
        let metrics = std::sync::Arc::new(hookd::telemetry::Metrics::new());
        let (recorder, _) = hookd::history::Recorder::start(history, spool, metrics, CancellationToken::new());
        let store = hookd::open_catalog_store(&config).await.unwrap();
        let catalog = hookd::catalog::Catalog::open(config.clone(), store).await.unwrap();
        let metrics = Arc::new(Metrics::new());
        let ingestor = Arc::new(hookd::ingest::Ingestor::new(
            &config,
            catalog,
            backend.clone(),
            Arc::new(tokio::sync::Notify::new()),
            recorder,
            metrics.clone(),
        ));
        // No smtp_host: email is off.
        let (notifier, _) = Notifier::start(&config, metrics, CancellationToken::new()).unwrap();
        Pipeline {
            backend,
            ingestor,
            notifier,
            _dir: dir,
        }
    }

    /// Waits until `n` deliveries are due.
    async fn expect_due(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let due = self.backend.queue.depth(hookd::queue::now_ms()).await.unwrap().due;
            if due == n {
                return;
            }
            assert!(Instant::now() < deadline, "{due} of {n} notification events queued");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_dead_deliveries_spawns_no_task_each_and_loses_no_event() {
    let pipeline = Pipeline::start().await;
    let stop = CancellationToken::new();
    let (alerts, task) =
        hookd::notify::Alerts::start(pipeline.notifier.clone(), pipeline.ingestor.clone(), stop.clone());
    let runtime = tokio::runtime::Handle::current().metrics();
    let before = runtime.num_alive_tasks();
    for n in 0..2000 {
        alerts.raise(dead("crm", n));
    }
    let alive = runtime.num_alive_tasks();
    assert!(
        alive < before + 50,
        "raising 2000 alerts left {} more tasks alive",
        alive - before
    );
    pipeline.expect_due(2000).await;
    // Those still queued at shutdown are ingested before the task ends.
    for n in 2000..2100 {
        alerts.raise(dead("crm", n));
    }
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the alerts task ends after shutdown")
        .unwrap();
    pipeline.expect_due(2100).await;
}
