//! Notifications: telling operators that a subscription was disabled, that
//! it recovered, or that deliveries died after their last retry.
//!
//! Two channels carry the same [`Notification`]:
//!
//! - **Email**, through a [`Notifier`]: [`Notifier::push`] never blocks (a
//!   bounded queue; when it is full the notification is counted as dropped
//!   and logged). A background task groups notifications by recipient list
//!   and sends *one* digest mail per list per `notify.digest_window`, so an
//!   endpoint that fails a thousand deliveries produces one mail, not a
//!   thousand. The recipients are `notify.to`, or a subscription's own
//!   `notify_to` for notifications about that subscription. SMTP failures
//!   are logged with the reason and retried with backoff; pending digests
//!   are flushed on shutdown.
//! - **A `hookd.*` event** ([`Notification::to_event`]) ingested through
//!   the normal pipeline, so a subscription can receive
//!   `hookd.subscription.disabled`, `hookd.subscription.recovered` and
//!   `hookd.delivery.dead` like any other event. [`Alerts::raise`] never
//!   blocks either: one bounded queue feeds one task, tracked and stopped
//!   after the dispatcher, that ingests the events in batches (when the
//!   queue is full an event is dropped and logged).
//!
//! ## Loops
//!
//! A subscription that receives `hookd.delivery.dead` and whose endpoint is
//! down would see the dead delivery of that event raise another
//! `hookd.delivery.dead`, and so on for ever. So: **a dead delivery of a
//! `hookd.*` event must not be turned into an event**. Check
//! [`Notification::is_about_hookd_event`] before ingesting
//! [`Notification::to_event`]. The email about it is still sent: mail does
//! not feed back into the pipeline, and the digest bounds its volume.
//!
//! Mails carry subscription names, delivery and event ids, event types and
//! the last error, never configuration values: no secrets, no endpoint URLs.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{Config, NotifyConfig, SmtpTls, SubscriptionName};
use crate::ingest::{Event, EventId};
use crate::queue::{Delivery, DeliveryId};
use crate::telemetry::metrics::{Metrics, NotificationKind, NotificationResult};

/// Type of the event raised when a subscription is disabled.
pub const EVENT_SUBSCRIPTION_DISABLED: &str = "hookd.subscription.disabled";
/// Type of the event raised when a subscription is enabled again.
pub const EVENT_SUBSCRIPTION_RECOVERED: &str = "hookd.subscription.recovered";
/// Type of the event raised when a delivery dies after its last retry.
pub const EVENT_DELIVERY_DEAD: &str = "hookd.delivery.dead";

/// Notifications waiting for the background task; beyond this, dropped.
const QUEUE_CAPACITY: usize = 10_000;
/// Items listed in one mail; the rest are counted ("and N more").
pub const MAX_LISTED: usize = 100;
/// Longest error text quoted per item.
const MAX_ERROR_CHARS: usize = 300;
/// Subscriptions named in a subject before "and N more".
const MAX_SUBJECT_SUBSCRIPTIONS: usize = 3;
/// Attempts at sending one mail.
const SEND_ATTEMPTS: u32 = 5;
/// Delay before the first resend; doubles after each failure.
const RESEND_INITIAL: Duration = Duration::from_secs(1);
/// Timeout of one SMTP exchange.
const SMTP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long shutdown waits for mails still being sent.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// Something an operator should hear about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notification {
    /// A subscription was disabled (automatically or by an operator).
    SubscriptionDisabled {
        /// The subscription.
        subscription: SubscriptionName,
        /// Why, in words (`10 consecutive failed attempts`, `410 Gone`).
        reason: String,
        /// When it was disabled.
        at: DateTime<Utc>,
    },
    /// A disabled subscription was enabled again.
    SubscriptionRecovered {
        /// The subscription.
        subscription: SubscriptionName,
        /// When it was enabled.
        at: DateTime<Utc>,
    },
    /// A delivery failed its last retry and is dead (kept, replayable).
    DeliveryDead {
        /// The subscription it was for.
        subscription: SubscriptionName,
        /// The dead delivery.
        delivery_id: DeliveryId,
        /// The event it carried.
        event_id: EventId,
        /// That event's type.
        event_type: String,
        /// Attempts made.
        attempts: u32,
        /// Why the last attempt failed, if known.
        error: Option<String>,
        /// When it died.
        at: DateTime<Utc>,
    },
}

impl Notification {
    /// The notification about `delivery`, dead at `at`.
    pub fn dead(delivery: &Delivery, at: DateTime<Utc>) -> Notification {
        Notification::DeliveryDead {
            subscription: delivery.subscription.clone(),
            delivery_id: delivery.id.clone(),
            event_id: delivery.event_id.clone(),
            event_type: delivery.event_type.clone(),
            attempts: delivery.attempts,
            error: delivery.last_error.clone(),
            at,
        }
    }

    /// The type of the `hookd.*` event this becomes.
    pub fn event_type(&self) -> &'static str {
        match self {
            Notification::SubscriptionDisabled { .. } => EVENT_SUBSCRIPTION_DISABLED,
            Notification::SubscriptionRecovered { .. } => EVENT_SUBSCRIPTION_RECOVERED,
            Notification::DeliveryDead { .. } => EVENT_DELIVERY_DEAD,
        }
    }

    /// The subscription it is about.
    pub fn subscription(&self) -> &SubscriptionName {
        match self {
            Notification::SubscriptionDisabled { subscription, .. }
            | Notification::SubscriptionRecovered { subscription, .. }
            | Notification::DeliveryDead { subscription, .. } => subscription,
        }
    }

    /// When it happened.
    pub fn at(&self) -> DateTime<Utc> {
        match self {
            Notification::SubscriptionDisabled { at, .. }
            | Notification::SubscriptionRecovered { at, .. }
            | Notification::DeliveryDead { at, .. } => *at,
        }
    }

    /// Its kind, as metrics label it.
    pub fn kind(&self) -> NotificationKind {
        match self {
            Notification::SubscriptionDisabled { .. } => NotificationKind::Disabled,
            Notification::SubscriptionRecovered { .. } => NotificationKind::Recovered,
            Notification::DeliveryDead { .. } => NotificationKind::Dead,
        }
    }

    /// True for a dead delivery of a `hookd.*` event. Such a notification
    /// must not be ingested as an event (see the module docs: it would loop).
    pub fn is_about_hookd_event(&self) -> bool {
        matches!(self, Notification::DeliveryDead { event_type, .. } if crate::model::is_internal(event_type))
    }

    /// The `hookd.*` event describing this notification, for the normal
    /// pipeline. Its id is deterministic, so a notification raised twice
    /// (by two processes, or after a crash) is deduplicated:
    /// `hookd_dead_<delivery id>`, `hookd_disabled_<subscription>_<unix ms>`,
    /// `hookd_recovered_<subscription>_<unix ms>`. Do not ingest it when
    /// [`Notification::is_about_hookd_event`] is true.
    pub fn to_event(&self) -> Event {
        let at_text = self.at().to_rfc3339_opts(SecondsFormat::Millis, true);
        let (id, data) = match self {
            Notification::SubscriptionDisabled {
                subscription, reason, ..
            } => (
                format!("hookd_disabled_{subscription}_{}", self.at().timestamp_millis()),
                json!({"subscription": subscription, "reason": reason, "disabled_at": at_text}),
            ),
            Notification::SubscriptionRecovered { subscription, .. } => (
                format!("hookd_recovered_{subscription}_{}", self.at().timestamp_millis()),
                json!({"subscription": subscription, "recovered_at": at_text}),
            ),
            Notification::DeliveryDead {
                subscription,
                delivery_id,
                event_id,
                event_type,
                attempts,
                error,
                ..
            } => (
                format!("hookd_dead_{delivery_id}"),
                json!({
                    "subscription": subscription,
                    "delivery_id": delivery_id,
                    "event_id": event_id,
                    "event_type": event_type,
                    "attempts": attempts,
                    "error": error,
                    "dead_at": at_text,
                }),
            ),
        };
        // Subscription names and delivery ids are made of id characters, so
        // the id always parses; the fallback only keeps this total.
        let id = EventId::parse(&id).unwrap_or_else(|_| EventId::generate());
        // A `json!` object always serializes.
        let data = serde_json::value::to_raw_value(&data).unwrap_or_default();
        Event {
            id,
            event_type: self.event_type().to_owned(),
            occurred_at: self.at(),
            data,
            tenant: None,
        }
    }

    /// One item of a digest mail: a line, then indented details.
    fn describe(&self, out: &mut String) {
        let at = self.at().to_rfc3339_opts(SecondsFormat::Secs, true);
        let _ = match self {
            Notification::SubscriptionDisabled {
                subscription, reason, ..
            } => writeln!(
                out,
                "- {at}  {subscription}: subscription disabled\n    reason: {}",
                one_line(reason)
            ),
            Notification::SubscriptionRecovered { subscription, .. } => {
                writeln!(out, "- {at}  {subscription}: subscription recovered (enabled again)")
            }
            Notification::DeliveryDead {
                subscription,
                delivery_id,
                event_id,
                event_type,
                attempts,
                error,
                ..
            } => writeln!(
                out,
                "- {at}  {subscription}: delivery dead after {attempts} attempt{}\n    delivery: {delivery_id}\n    event: {event_id} ({event_type})\n    last error: {}",
                if *attempts == 1 { "" } else { "s" },
                error.as_deref().map(one_line).unwrap_or_else(|| "unknown".into()),
            ),
        };
    }
}

/// `text` on one line, at most [`MAX_ERROR_CHARS`] characters.
fn one_line(text: &str) -> String {
    let mut line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_ERROR_CHARS)
        .collect();
    if text.chars().count() > MAX_ERROR_CHARS {
        line.push_str("...");
    }
    line
}

/// Why the notifier could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An address in the configuration does not parse (validation
    /// normally catches this first).
    #[error("invalid address in `{key}`: {reason}")]
    Address {
        /// The configuration key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// TLS parameters for the SMTP host could not be built.
    #[error("cannot set up TLS for notify.smtp_host `{host}`: {reason}")]
    Tls {
        /// The SMTP host.
        host: String,
        /// What failed.
        reason: String,
    },
}

/// Sends notifications by email, in digests. Cheap to clone; every clone
/// feeds the same background task.
#[derive(Clone, Debug)]
pub struct Notifier {
    /// Where [`Notifier::push`] puts notifications; `None` when email is off.
    tx: Option<mpsc::Sender<Notification>>,
    /// Counts notifications by kind and result.
    metrics: Arc<Metrics>,
    /// Notifications dropped because the queue was full, for the log.
    dropped: Arc<AtomicU64>,
}

impl Notifier {
    /// Starts the digest task for `config.notify`, routing each
    /// subscription's notifications to its `notify_to` (or `notify.to`).
    /// Without `notify.smtp_host` email is off: the notifier accepts and
    /// ignores notifications, and the task ends at once. The task ends
    /// after `shutdown`, once pending digests are sent (or given up on).
    pub fn start(
        config: &Config,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<(Notifier, JoinHandle<()>), Error> {
        let dropped = Arc::new(AtomicU64::new(0));
        let Some(host) = config.notify.smtp_host.clone() else {
            debug!("notify.smtp_host is not set: email notifications are off");
            let notifier = Notifier {
                tx: None,
                metrics,
                dropped,
            };
            return Ok((notifier, tokio::spawn(async {})));
        };
        let mail = MailSettings::new(&config.notify, &host)?;
        let mut routes = HashMap::new();
        for sub in &config.subscriptions {
            if let Some(to) = &sub.notify_to {
                let key = format!("subscriptions.{}.notify_to", sub.name);
                routes.insert(sub.name.clone(), Recipients::parse(&key, to)?);
            }
        }
        let default_to = Recipients::parse("notify.to", &config.notify.to)?;
        if default_to.mailboxes.is_empty() {
            warn!("notify.to is empty: notifications about subscriptions without their own notify_to are not emailed");
        }
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let task = DigestTask {
            mail: Arc::new(mail),
            routes,
            default_to,
            window: config.notify.digest_window,
            pending: HashMap::new(),
            sends: JoinSet::new(),
            metrics: metrics.clone(),
        };
        info!(host = %host, port = config.notify.smtp_port, tls = ?config.notify.smtp_tls, window = ?config.notify.digest_window, "email notifications on");
        let handle = tokio::spawn(task.run(rx, shutdown));
        Ok((
            Notifier {
                tx: Some(tx),
                metrics,
                dropped,
            },
            handle,
        ))
    }

    /// Whether notifications are emailed at all.
    pub fn is_enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues a notification for the next digest. Never blocks: when the
    /// queue is full (or the task has stopped) it is counted as dropped.
    pub fn push(&self, notification: Notification) {
        let Some(tx) = &self.tx else {
            return;
        };
        let kind = notification.kind();
        if let Err(e) = tx.try_send(notification) {
            self.metrics.notifications(kind, NotificationResult::Dropped, 1);
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // The first, then every thousandth: a flood must not flood the log.
            if dropped == 1 || dropped.is_multiple_of(1000) {
                let (why, n) = match &e {
                    mpsc::error::TrySendError::Full(n) => ("the notification queue is full", n),
                    mpsc::error::TrySendError::Closed(n) => ("the notifier has stopped", n),
                };
                warn!(dropped_total = dropped, subscription = %n.subscription(), "notification not emailed: {why}");
            }
        }
    }
}

/// A recipient list: what one digest goes to.
#[derive(Clone, Debug)]
struct Recipients {
    /// The mailboxes, sorted and without repeats.
    mailboxes: Vec<Mailbox>,
    /// Their text, the grouping key.
    key: Vec<String>,
}

impl Recipients {
    fn parse(key: &str, list: &[String]) -> Result<Recipients, Error> {
        let mut mailboxes = Vec::with_capacity(list.len());
        for (n, text) in list.iter().enumerate() {
            let mailbox = crate::config::parse_mailbox(text).map_err(|reason| Error::Address {
                key: format!("{key}[{n}]"),
                reason,
            })?;
            mailboxes.push(mailbox);
        }
        mailboxes.sort_by_key(|m| m.email.to_string().to_ascii_lowercase());
        mailboxes.dedup_by_key(|m| m.email.to_string().to_ascii_lowercase());
        let key = mailboxes
            .iter()
            .map(|m| m.email.to_string().to_ascii_lowercase())
            .collect();
        Ok(Recipients { mailboxes, key })
    }
}

/// The transport and the fixed parts of every mail.
struct MailSettings {
    /// The SMTP client (a new connection per mail).
    transport: AsyncSmtpTransport<Tokio1Executor>,
    /// The sender.
    from: Mailbox,
    /// Start of every subject.
    subject_prefix: String,
    /// `host:port`, for logs.
    server: String,
}

impl MailSettings {
    fn new(config: &NotifyConfig, host: &str) -> Result<MailSettings, Error> {
        let from_text = config.from.as_deref().ok_or_else(|| Error::Address {
            key: "notify.from".into(),
            reason: "is required when notify.smtp_host is set".into(),
        })?;
        let from = crate::config::parse_mailbox(from_text).map_err(|reason| Error::Address {
            key: "notify.from".into(),
            reason,
        })?;
        let tls_parameters = || {
            TlsParameters::new(host.to_owned()).map_err(|e| Error::Tls {
                host: host.to_owned(),
                reason: e.to_string(),
            })
        };
        let tls = match config.smtp_tls {
            SmtpTls::Starttls => Tls::Required(tls_parameters()?),
            SmtpTls::Tls => Tls::Wrapper(tls_parameters()?),
            SmtpTls::None => Tls::None,
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(config.smtp_port)
            .tls(tls)
            .timeout(Some(SMTP_TIMEOUT));
        if let (Some(user), Some(password)) = (&config.smtp_username, &config.smtp_password) {
            builder = builder.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
        }
        Ok(MailSettings {
            transport: builder.build(),
            from,
            subject_prefix: config.subject_prefix.clone(),
            server: format!("{host}:{}", config.smtp_port),
        })
    }
}

/// Notifications gathered for one recipient list.
struct Digest {
    /// Who receives it.
    recipients: Recipients,
    /// When it is sent: the first notification's arrival plus the window.
    due: Instant,
    /// The first [`MAX_LISTED`] notifications, in arrival order.
    listed: Vec<Notification>,
    /// Notifications past [`MAX_LISTED`], counted only.
    unlisted: usize,
    /// Counts per subscription, over every notification (listed or not).
    summary: BTreeMap<SubscriptionName, Summary>,
    /// Counts per kind, for metrics once the mail is sent or given up on.
    kinds: HashMap<NotificationKind, u64>,
    /// The first and last notification times.
    span: (DateTime<Utc>, DateTime<Utc>),
}

/// What happened to one subscription within a digest.
#[derive(Default)]
struct Summary {
    /// Times it was disabled.
    disabled: u32,
    /// Times it was enabled again.
    recovered: u32,
    /// Deliveries that died.
    dead: u64,
}

impl std::fmt::Display for Summary {
    /// `disabled, recovered, 37 deliveries dead` (the parts that happened).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::with_capacity(3);
        if self.disabled > 0 {
            parts.push("disabled".to_string());
        }
        if self.recovered > 0 {
            parts.push("recovered".to_string());
        }
        match self.dead {
            0 => {}
            1 => parts.push("1 delivery dead".to_string()),
            n => parts.push(format!("{n} deliveries dead")),
        }
        f.write_str(&parts.join(", "))
    }
}

impl Digest {
    fn new(recipients: Recipients, due: Instant, first: &Notification) -> Digest {
        Digest {
            recipients,
            due,
            listed: Vec::new(),
            unlisted: 0,
            summary: BTreeMap::new(),
            kinds: HashMap::new(),
            span: (first.at(), first.at()),
        }
    }

    fn add(&mut self, n: Notification) {
        let summary = self.summary.entry(n.subscription().clone()).or_default();
        match n {
            Notification::SubscriptionDisabled { .. } => summary.disabled += 1,
            Notification::SubscriptionRecovered { .. } => summary.recovered += 1,
            Notification::DeliveryDead { .. } => summary.dead += 1,
        }
        *self.kinds.entry(n.kind()).or_default() += 1;
        self.span = (self.span.0.min(n.at()), self.span.1.max(n.at()));
        if self.listed.len() < MAX_LISTED {
            self.listed.push(n);
        } else {
            self.unlisted += 1;
        }
    }

    fn total(&self) -> usize {
        self.listed.len() + self.unlisted
    }

    /// `[hookd] billing: recovered; crm: disabled, 37 deliveries dead`.
    fn subject(&self, prefix: &str) -> String {
        let mut parts: Vec<String> = self
            .summary
            .iter()
            .take(MAX_SUBJECT_SUBSCRIPTIONS)
            .map(|(name, s)| format!("{name}: {s}"))
            .collect();
        let more = self.summary.len().saturating_sub(MAX_SUBJECT_SUBSCRIPTIONS);
        if more > 0 {
            parts.push(format!(
                "and {more} more subscription{}",
                if more == 1 { "" } else { "s" }
            ));
        }
        let subject = parts.join("; ");
        if prefix.is_empty() {
            subject
        } else {
            format!("{prefix} {subject}")
        }
    }

    /// The plain-text body: a summary, then each listed item.
    fn body(&self) -> String {
        let total = self.total();
        let mut out = String::new();
        let (first, last) = self.span;
        let _ = writeln!(
            out,
            "hookd has {total} notification{} from {} to {}.\n",
            if total == 1 { "" } else { "s" },
            first.to_rfc3339_opts(SecondsFormat::Secs, true),
            last.to_rfc3339_opts(SecondsFormat::Secs, true),
        );
        for (name, s) in &self.summary {
            let _ = writeln!(out, "{name}: {s}");
        }
        out.push('\n');
        for n in &self.listed {
            n.describe(&mut out);
        }
        if self.unlisted > 0 {
            let _ = writeln!(
                out,
                "\n... and {} more not listed here. Dead deliveries are kept: list them with `hookd dead` or GET /v1/deliveries/dead, and replay them when the endpoint is fixed.",
                self.unlisted
            );
        }
        out.push_str("\nSent by hookd. Recipients: notify.to, or a subscription's notify_to.\n");
        out
    }
}

/// The background task: gathers digests and sends them when due.
struct DigestTask {
    /// Transport and fixed mail parts, shared with send tasks.
    mail: Arc<MailSettings>,
    /// Recipients per subscription that sets `notify_to`.
    routes: HashMap<SubscriptionName, Recipients>,
    /// `notify.to`: everyone else's recipients.
    default_to: Recipients,
    /// How long a digest gathers before it is sent.
    window: Duration,
    /// Digests gathering, by recipient list.
    pending: HashMap<Vec<String>, Digest>,
    /// Mails being sent (with their retries).
    sends: JoinSet<()>,
    /// Counts what became of each notification.
    metrics: Arc<Metrics>,
}

impl DigestTask {
    async fn run(mut self, mut rx: mpsc::Receiver<Notification>, shutdown: CancellationToken) {
        loop {
            let next_due = self.pending.values().map(|d| d.due).min();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                received = rx.recv() => match received {
                    Some(n) => self.add(n),
                    None => break,
                },
                _ = sleep_until(next_due), if next_due.is_some() => self.send_due(Instant::now(), &shutdown),
                Some(_) = self.sends.join_next(), if !self.sends.is_empty() => {}
            }
        }
        // Flush: whatever was pushed before shutdown goes out now.
        rx.close();
        while let Ok(n) = rx.try_recv() {
            self.add(n);
        }
        self.send_due(Instant::now() + self.window, &shutdown);
        let in_flight = self.sends.len();
        if in_flight > 0 {
            debug!(mails = in_flight, "notify: waiting for mails being sent");
            let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
                while self.sends.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                error!(mails = self.sends.len(), grace = ?SHUTDOWN_GRACE, "notify: gave up on mails still being sent at shutdown");
                self.sends.abort_all();
            }
        }
    }

    fn add(&mut self, n: Notification) {
        let recipients = self.routes.get(n.subscription()).unwrap_or(&self.default_to);
        if recipients.mailboxes.is_empty() {
            debug!(subscription = %n.subscription(), kind = n.event_type(), "notification has no recipients (notify.to and notify_to are empty)");
            self.metrics.notifications(n.kind(), NotificationResult::Unrouted, 1);
            return;
        }
        let due = Instant::now() + self.window;
        self.pending
            .entry(recipients.key.clone())
            .or_insert_with(|| Digest::new(recipients.clone(), due, &n))
            .add(n);
    }

    /// Sends every digest due by `now`, each in a task of its own.
    fn send_due(&mut self, now: Instant, shutdown: &CancellationToken) {
        let due: Vec<Vec<String>> = self
            .pending
            .iter()
            .filter(|(_, d)| d.due <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            if let Some(digest) = self.pending.remove(&key) {
                let mail = self.mail.clone();
                let metrics = self.metrics.clone();
                let shutdown = shutdown.clone();
                self.sends.spawn(send_digest(mail, digest, metrics, shutdown));
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Builds and sends one digest, retrying with backoff; never panics.
async fn send_digest(mail: Arc<MailSettings>, digest: Digest, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let subject = digest.subject(&mail.subject_prefix);
    let to: Vec<String> = digest.recipients.key.clone();
    let count = |result| {
        for (kind, n) in &digest.kinds {
            metrics.notifications(*kind, result, *n);
        }
    };
    let mut builder = Message::builder()
        .from(mail.from.clone())
        .subject(subject.clone())
        .header(ContentType::TEXT_PLAIN);
    for mailbox in &digest.recipients.mailboxes {
        builder = builder.to(mailbox.clone());
    }
    let message = match builder.body(digest.body()) {
        Ok(message) => message,
        Err(e) => {
            error!(to = ?to, error = %e, "notify: cannot build the digest mail; its notifications are lost");
            count(NotificationResult::Failed);
            return;
        }
    };
    let mut delay = RESEND_INITIAL;
    for attempt in 1..=SEND_ATTEMPTS {
        match mail.transport.send(message.clone()).await {
            Ok(_) => {
                info!(to = ?to, notifications = digest.total(), subject = %subject, "notify: digest mail sent");
                count(NotificationResult::Sent);
                return;
            }
            Err(e) if e.is_permanent() => {
                error!(server = %mail.server, to = ?to, error = %e, "notify: the SMTP server refused the digest mail for good; its {} notifications are lost", digest.total());
                count(NotificationResult::Failed);
                return;
            }
            Err(e) if attempt < SEND_ATTEMPTS => {
                warn!(server = %mail.server, to = ?to, attempt, retry_in = ?delay, error = %e, "notify: cannot send the digest mail; will retry");
                // At shutdown, retry at once instead of waiting.
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => {}
                }
                delay *= 2;
            }
            Err(e) => {
                error!(server = %mail.server, to = ?to, attempts = attempt, error = %e, "notify: gave up sending the digest mail; its {} notifications are lost", digest.total());
                count(NotificationResult::Failed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> SubscriptionName {
        SubscriptionName::parse(n).unwrap()
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn dead(sub: &str, event_type: &str) -> Notification {
        Notification::DeliveryDead {
            subscription: name(sub),
            delivery_id: DeliveryId::parse("dlv_0a0123456789abcdef0123456789abcdef").unwrap(),
            event_id: EventId::parse("evt_1").unwrap(),
            event_type: event_type.into(),
            attempts: 6,
            error: Some("endpoint answered 500\nInternal".into()),
            at: at(5),
        }
    }

    #[test]
    fn events_have_types_deterministic_ids_and_data() {
        let disabled = Notification::SubscriptionDisabled {
            subscription: name("crm"),
            reason: "10 consecutive failures".into(),
            at: at(0),
        };
        let recovered = Notification::SubscriptionRecovered {
            subscription: name("crm"),
            at: at(60),
        };
        let d = dead("crm", "coupon.redeemed");
        assert_eq!(disabled.event_type(), "hookd.subscription.disabled");
        assert_eq!(recovered.event_type(), "hookd.subscription.recovered");
        assert_eq!(d.event_type(), "hookd.delivery.dead");

        let e = d.to_event();
        assert_eq!(e.id.as_str(), "hookd_dead_dlv_0a0123456789abcdef0123456789abcdef");
        assert_eq!(e.id, d.to_event().id, "the same notification makes the same id");
        assert_eq!(e.event_type, "hookd.delivery.dead");
        let data: serde_json::Value = serde_json::from_str(e.data.get()).unwrap();
        assert_eq!(data["event_id"], "evt_1");
        assert_eq!(data["attempts"], 6);
        assert_eq!(data["subscription"], "crm");
        assert_eq!(data["event_type"], "coupon.redeemed");

        let e = disabled.to_event();
        assert_eq!(
            e.id.as_str(),
            format!("hookd_disabled_crm_{}", at(0).timestamp_millis())
        );
        let data: serde_json::Value = serde_json::from_str(e.data.get()).unwrap();
        assert_eq!(data["reason"], "10 consecutive failures");
        assert!(recovered.to_event().id.as_str().starts_with("hookd_recovered_crm_"));
        // Events made here are well formed, and of the type space reserved
        // for hookd (which producers may not send).
        for n in [&disabled, &recovered, &d] {
            let e = n.to_event();
            crate::ingest::check_event_type(&e.event_type).unwrap();
            assert!(crate::ingest::is_internal(&e.event_type), "{}", e.event_type);
            EventId::parse(e.id.as_str()).unwrap();
            assert!(e.data.get().starts_with('{'));
        }
    }

    #[test]
    fn dead_hookd_events_are_flagged_against_loops() {
        assert!(dead("crm", "hookd.delivery.dead").is_about_hookd_event());
        assert!(dead("crm", "hookd.subscription.disabled").is_about_hookd_event());
        assert!(!dead("crm", "hookdx.y").is_about_hookd_event());
        assert!(!dead("crm", "coupon.redeemed").is_about_hookd_event());
        let disabled = Notification::SubscriptionDisabled {
            subscription: name("crm"),
            reason: "x".into(),
            at: at(0),
        };
        assert!(!disabled.is_about_hookd_event());
    }

    #[test]
    fn digest_subject_and_body_summarise_and_cap() {
        let recipients = Recipients::parse("t", &["ops@example.com".into()]).unwrap();
        let first = Notification::SubscriptionDisabled {
            subscription: name("crm"),
            reason: "410 Gone".into(),
            at: at(0),
        };
        let mut digest = Digest::new(recipients, Instant::now(), &first);
        digest.add(first);
        for _ in 0..150 {
            digest.add(dead("crm", "coupon.redeemed"));
        }
        digest.add(Notification::SubscriptionRecovered {
            subscription: name("billing"),
            at: at(9),
        });
        assert_eq!(
            digest.subject("[hookd]"),
            "[hookd] billing: recovered; crm: disabled, 150 deliveries dead"
        );
        let body = digest.body();
        assert!(body.contains("hookd has 152 notifications"), "{body}");
        assert_eq!(body.matches("\n- ").count(), MAX_LISTED, "{body}");
        assert!(body.contains("and 52 more not listed"), "{body}");
        assert!(body.contains("reason: 410 Gone"), "{body}");
        assert!(body.contains("last error: endpoint answered 500 Internal"), "{body}");
        assert!(body.is_ascii());
    }

    #[test]
    fn subjects_name_at_most_three_subscriptions() {
        let recipients = Recipients::parse("t", &[]).unwrap();
        let n = |s: &str| Notification::SubscriptionRecovered {
            subscription: name(s),
            at: at(0),
        };
        let mut digest = Digest::new(recipients, Instant::now(), &n("a"));
        for s in ["a", "b", "c", "d", "e"] {
            digest.add(n(s));
        }
        assert_eq!(
            digest.subject(""),
            "a: recovered; b: recovered; c: recovered; and 2 more subscriptions"
        );
    }

    #[test]
    fn recipient_lists_are_keyed_regardless_of_order_and_case() {
        let a = Recipients::parse("t", &["B@example.com".into(), "Ops <a@example.com>".into()]).unwrap();
        let b = Recipients::parse(
            "t",
            &["a@example.com".into(), "b@example.com".into(), "b@example.com".into()],
        )
        .unwrap();
        assert_eq!(a.key, b.key);
        assert!(Recipients::parse("notify.to", &["nope".into()])
            .unwrap_err()
            .to_string()
            .contains("notify.to[0]"));
    }
}

/// Notification events waiting to be ingested; beyond this, dropped (and
/// logged), as email is beyond [`QUEUE_CAPACITY`].
const EVENT_CAPACITY: usize = 10_000;
/// Most notification events ingested in one batch.
const EVENT_BATCH: usize = 256;

/// Raises notifications both ways: into the email digest, and as a
/// `hookd.*` event through the normal pipeline, so subscriptions can
/// receive them like any other event. The events go through one bounded
/// queue to one task ([`Alerts::start`]), which ingests them in batches:
/// a burst of dead deliveries costs no task each.
#[derive(Clone)]
pub struct Alerts {
    /// The email digests.
    notifier: Notifier,
    /// To the task that ingests the `hookd.*` events.
    events: mpsc::Sender<Notification>,
    /// Events dropped because the queue was full, for the log.
    dropped: Arc<AtomicU64>,
}

impl Alerts {
    /// Alerts through `notifier`, and `ingestor` for the events, which a
    /// task of its own ingests until `shutdown`; then it ingests what is
    /// still queued and ends. Must be called within a tokio runtime.
    pub fn start(
        notifier: Notifier,
        ingestor: Arc<crate::ingest::Ingestor>,
        shutdown: CancellationToken,
    ) -> (Alerts, JoinHandle<()>) {
        let (events, rx) = mpsc::channel(EVENT_CAPACITY);
        let task = tokio::spawn(ingest_events(ingestor, rx, shutdown));
        let alerts = Alerts {
            notifier,
            events,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        (alerts, task)
    }

    /// Emails `notification` (in the next digest) and queues its event,
    /// unless it is about a `hookd.*` event itself (no loops). Never blocks:
    /// when the event queue is full the event is dropped and logged.
    pub fn raise(&self, notification: Notification) {
        self.notifier.push(notification.clone());
        if notification.is_about_hookd_event() {
            return;
        }
        if let Err(e) = self.events.try_send(notification) {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // The first, then every thousandth: a flood must not flood the log.
            if dropped == 1 || dropped.is_multiple_of(1000) {
                let (why, n) = match &e {
                    mpsc::error::TrySendError::Full(n) => ("the notification event queue is full", n),
                    mpsc::error::TrySendError::Closed(n) => ("hookd is stopping", n),
                };
                warn!(dropped_total = dropped, kind = n.event_type(), subscription = %n.subscription(),
                    "notification event not queued: {why}");
            }
        }
    }
}

/// Ingests notification events in batches until `shutdown`, then what is
/// still queued.
async fn ingest_events(
    ingestor: Arc<crate::ingest::Ingestor>,
    mut rx: mpsc::Receiver<Notification>,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(EVENT_BATCH);
    loop {
        let more = tokio::select! {
            n = rx.recv_many(&mut batch, EVENT_BATCH) => n > 0,
            _ = shutdown.cancelled() => {
                rx.close();
                rx.recv_many(&mut batch, EVENT_BATCH).await > 0
            }
        };
        if !more {
            return;
        }
        let events: Vec<Event> = batch.drain(..).map(|n| n.to_event()).collect();
        if let Err(e) = ingestor
            .ingest_batch(events.clone(), crate::ingest::Source::Internal)
            .await
        {
            // A batch is all or nothing: one refused event (its tenant
            // deleted meanwhile, say) must not take the others with it.
            debug!(error = %e, count = events.len(), "notification events: batch refused, queueing one by one");
            for event in events {
                let kind = event.event_type.clone();
                if let Err(e) = ingestor.ingest(event, crate::ingest::Source::Internal).await {
                    warn!(error = %e, kind = %kind, "could not queue the notification event");
                }
            }
        }
    }
}
