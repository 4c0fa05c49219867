//! The [`Recorder`]: how ingest and the dispatcher hand entries to the
//! delivery log without ever waiting, and the one writer task that moves
//! them through the [`spool`](super::spool) into the store.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::spool::{self, LogStatus, Spool};
use super::{Entry, History, RECORD_BACKLOG, RECORD_BACKLOG_BYTES, RECORD_BATCH, RECORD_LINGER};
use crate::telemetry::Metrics;

/// Hands entries to the history's writer task without ever waiting: how
/// ingest and the dispatcher record. Cheap to clone; every clone feeds the
/// one writer [`Recorder::start`] started.
#[derive(Clone)]
pub struct Recorder {
    /// Entries on their way to the writer.
    tx: mpsc::Sender<Entry>,
    /// Bytes of event bodies in `tx`, bounded by [`RECORD_BACKLOG_BYTES`].
    body_bytes: Arc<AtomicUsize>,
    /// How writing stands, shared with the writer.
    status: Arc<LogStatus>,
    /// Where drops are counted.
    metrics: Arc<Metrics>,
}

impl Recorder {
    /// Starts the writer task of `history`: it writes what the recorders
    /// hand it, in batches, until `stop` is cancelled (or every recorder
    /// is dropped), then writes what is already waiting and ends. What the
    /// store does not take waits in `spool` (see [`spool`]). Cancel `stop`
    /// once the dispatcher has drained, so its last entries are kept.
    pub fn start(
        history: Arc<dyn History>,
        spool: Spool,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> (Recorder, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(RECORD_BACKLOG);
        let body_bytes = Arc::new(AtomicUsize::new(0));
        let status = Arc::new(LogStatus::default());
        let writer = Writer {
            history,
            spool,
            status: status.clone(),
            metrics: metrics.clone(),
            pause: spool::RETRY_FIRST,
            retry_at: tokio::time::Instant::now(),
            degraded_at: None,
        };
        let task = tokio::spawn(writer.run(rx, body_bytes.clone(), stop));
        (
            Recorder {
                tx,
                body_bytes,
                status,
                metrics,
            },
            task,
        )
    }

    /// How the log's writing stands.
    pub fn status(&self) -> &Arc<LogStatus> {
        &self.status
    }

    /// Room left in the channel to the writer, for tests that must not
    /// outrun a writer the machine's load keeps from running.
    #[cfg(test)]
    fn room(&self) -> usize {
        self.tx.capacity()
    }

    /// Hands `entry` to the writer; drops it with a warning (and counts
    /// it) if the backlog is full ([`RECORD_BACKLOG`] entries, or
    /// [`RECORD_BACKLOG_BYTES`] of event bodies). Returns whether it was
    /// taken.
    pub fn record(&self, entry: Entry) -> bool {
        let len = entry.body_len();
        if len > 0 {
            let before = self.body_bytes.fetch_add(len, Ordering::Relaxed);
            if before.saturating_add(len) > RECORD_BACKLOG_BYTES {
                self.body_bytes.fetch_sub(len, Ordering::Relaxed);
                tracing::warn!(
                    event_id = entry.subject(),
                    bytes = len,
                    "delivery log backlog full of event bodies: an event record was not kept"
                );
                self.dropped(1);
                return false;
            }
        }
        match self.tx.try_send(entry) {
            Ok(()) => true,
            Err(e) => {
                self.body_bytes.fetch_sub(len, Ordering::Relaxed);
                match e {
                    mpsc::error::TrySendError::Full(entry) => {
                        tracing::warn!(
                            id = entry.subject(),
                            "delivery log backlog full: an entry was not recorded"
                        );
                        self.dropped(1);
                    }
                    mpsc::error::TrySendError::Closed(entry) => {
                        tracing::debug!(
                            id = entry.subject(),
                            "delivery log writer stopped: an entry was not recorded"
                        )
                    }
                }
                false
            }
        }
    }

    fn dropped(&self, n: u64) {
        self.status.add_dropped(n);
        self.metrics.history_dropped(n);
    }
}

/// What a write of a batch came to.
enum Written {
    /// The store has it.
    Done,
    /// The store failed or did not answer in time: try again later.
    Failed(String),
    /// The store refused it for good (bad data): it never will take it.
    Refused(String),
}

/// Writes `batch` to `history`, within [`spool::WRITE_TIMEOUT`].
async fn write_to(history: &dyn History, batch: &[Entry]) -> Written {
    match tokio::time::timeout(spool::WRITE_TIMEOUT, history.record(batch)).await {
        Ok(Ok(())) => Written::Done,
        Ok(Err(e)) if e.is_refusal() => Written::Refused(e.to_string()),
        Ok(Err(e)) => Written::Failed(e.to_string()),
        Err(_) => Written::Failed(format!("no answer within {}s", spool::WRITE_TIMEOUT.as_secs())),
    }
}

/// The writer behind [`Recorder`]s (see [`spool`]).
struct Writer {
    history: Arc<dyn History>,
    spool: Spool,
    status: Arc<LogStatus>,
    metrics: Arc<Metrics>,
    /// Pause before the next retry while the store fails.
    pause: Duration,
    /// When the spool's front is tried again.
    retry_at: tokio::time::Instant,
    /// Since when the store has failed.
    degraded_at: Option<std::time::Instant>,
}

impl Writer {
    /// Moves entries from the recorders into the spool as they come, and
    /// writes the spool's oldest batches to the store one write at a time,
    /// concurrently, so a slow store never fills the recorders' channel: it
    /// only makes the spool longer. A write starts once a batch is full,
    /// [`RECORD_LINGER`] after its first entry came, or (while the store
    /// fails) when the retry is due. At `stop`, what the channel holds is
    /// spooled; the rest is written, or persisted on disk if the store
    /// fails or the spool is already on disk.
    async fn run(mut self, mut rx: mpsc::Receiver<Entry>, body_bytes: Arc<AtomicUsize>, stop: CancellationToken) {
        type InFlight = std::pin::Pin<Box<dyn std::future::Future<Output = (usize, Vec<Entry>, Written)> + Send>>;
        self.publish();
        let mut batch = Vec::with_capacity(RECORD_BATCH);
        let mut open = true;
        let mut stopping = false;
        // When the oldest entry not yet being written came in.
        let mut since: Option<tokio::time::Instant> = None;
        let mut in_flight: Option<InFlight> = None;
        loop {
            if in_flight.is_none() && !self.spool.is_empty() {
                let now = tokio::time::Instant::now();
                let degraded = self.status.degraded();
                if stopping && !open && (degraded || self.spool.disk_bytes() > 0) {
                    let n = self.spool.entries();
                    let lost = self.spool.persist();
                    self.drop_counted(lost);
                    tracing::warn!(
                        entries = n - lost,
                        "the delivery log store did not take every entry before the stop: they are spooled on disk and written at the next start"
                    );
                    self.publish();
                    return;
                }
                let due = if degraded {
                    now >= self.retry_at
                } else {
                    stopping
                        || self.spool.entries() >= RECORD_BATCH as u64
                        || since.is_none_or(|s| now >= s + RECORD_LINGER)
                };
                if due {
                    if let Some((entries, batches)) = self.spool.take_front(RECORD_BATCH) {
                        let history = self.history.clone();
                        in_flight = Some(Box::pin(async move {
                            let written = write_to(&*history, &entries).await;
                            (batches, entries, written)
                        }));
                    }
                }
            }
            if !open && in_flight.is_none() && self.spool.is_empty() {
                self.publish();
                return;
            }
            let wake = if self.status.degraded() {
                self.retry_at
            } else {
                since.map_or(self.retry_at, |s| s + RECORD_LINGER)
            };
            let idle = in_flight.is_none() && !self.spool.is_empty();
            tokio::select! {
                n = rx.recv_many(&mut batch, RECORD_BATCH), if open => {
                    if n == 0 {
                        open = false;
                    } else {
                        let bytes: usize = batch.iter().map(Entry::body_len).sum();
                        body_bytes.fetch_sub(bytes, Ordering::Relaxed);
                        if self.spool.is_empty() {
                            since = Some(tokio::time::Instant::now());
                        }
                        let fresh = std::mem::replace(&mut batch, Vec::with_capacity(RECORD_BATCH));
                        self.spool(fresh);
                    }
                }
                done = async { in_flight.as_mut().expect("a write in flight").await }, if in_flight.is_some() => {
                    in_flight = None;
                    let (batches, entries, written) = done;
                    match written {
                        Written::Done => {
                            self.spool.pop_front_n(batches);
                            self.recovered();
                        }
                        Written::Failed(e) => {
                            self.spool.release();
                            self.failed(e);
                        }
                        Written::Refused(e) => {
                            self.spool.pop_front_n(batches);
                            self.refused(entries, e).await;
                        }
                    }
                    since = (!self.spool.is_empty()).then(tokio::time::Instant::now);
                }
                _ = tokio::time::sleep_until(wake), if idle => {}
                _ = stop.cancelled(), if !stopping => {
                    stopping = true;
                    rx.close();
                }
            }
            self.publish();
        }
    }

    /// Writes `batch`, within [`spool::WRITE_TIMEOUT`].
    async fn write(&self, batch: &[Entry]) -> Written {
        write_to(&*self.history, batch).await
    }

    /// The store took a write: if it had failed, it is back.
    fn recovered(&mut self) {
        if let Some(since) = self.degraded_at.take() {
            tracing::info!(
                after_secs = since.elapsed().as_secs(),
                "the delivery log store takes entries again; the spooled entries follow"
            );
        }
        self.status.set_ok();
        self.pause = spool::RETRY_FIRST;
        self.retry_at = tokio::time::Instant::now();
    }

    /// A batch the store refused for good: written again one entry at a
    /// time, so one bad entry costs only itself (dropped, logged, counted).
    async fn refused(&mut self, batch: Vec<Entry>, error: String) {
        if batch.len() == 1 {
            tracing::error!(id = batch[0].subject(), %error, "the delivery log store refused an entry: it is dropped");
            self.drop_counted(1);
            return;
        }
        for entry in batch {
            let one = std::slice::from_ref(&entry);
            match self.write(one).await {
                Written::Done => {}
                Written::Refused(e) => {
                    tracing::error!(id = entry.subject(), error = %e, "the delivery log store refused an entry: it is dropped");
                    self.drop_counted(1);
                }
                Written::Failed(e) => {
                    self.failed(e);
                    self.spool(vec![entry]);
                }
            }
        }
    }

    /// The store failed: mark the log degraded and wait longer each time.
    fn failed(&mut self, error: String) {
        if self.degraded_at.is_none() {
            tracing::error!(%error, "cannot write the delivery log: entries wait in the spool until the store takes them again; deliveries go on");
            self.degraded_at = Some(std::time::Instant::now());
        } else {
            tracing::debug!(%error, "the delivery log store still fails");
        }
        self.status.set_degraded(error, crate::queue::now_ms());
        self.retry_at = tokio::time::Instant::now() + self.pause;
        self.pause = (self.pause * 2).min(spool::RETRY_MAX);
    }

    /// Puts `batch` in the spool, counting what does not fit.
    fn spool(&mut self, batch: Vec<Entry>) {
        let n = batch.len() as u64;
        let (dropped, error) = self.spool.push(batch);
        if dropped > 0 {
            match error {
                Some(e) => {
                    tracing::error!(entries = n, error = %e, "delivery log entries dropped: the spool cannot take them")
                }
                None => tracing::error!(
                    entries = n,
                    "delivery log entries dropped: the spool is full (history.spool_memory and history.spool_disk)"
                ),
            }
            self.drop_counted(dropped);
        }
    }

    fn drop_counted(&self, n: u64) {
        if n > 0 {
            self.status.add_dropped(n);
            self.metrics.history_dropped(n);
        }
    }

    /// Shows the spool's size in the status and the metrics.
    fn publish(&self) {
        self.status.set_spooled(self.spool.entries(), self.spool.disk_bytes());
        self.metrics
            .history_spooled(self.spool.entries(), self.status.degraded());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SubscriptionName;
    use crate::history::{
        activity, Activity, AttemptRecord, DeliveryState, DeliverySummary, Error, EventRecord, ListFilter, Page,
        SubscriptionStats,
    };
    use crate::ingest::EventId;
    use crate::model::{Millis, TenantId};
    use crate::queue::DeliveryId;

    /// A store that fails while `down`, refuses any batch holding the
    /// delivery `bad`, and keeps what it takes, in order.
    #[derive(Default)]
    struct Fake {
        down: std::sync::atomic::AtomicBool,
        bad: Option<DeliveryId>,
        taken: std::sync::Mutex<Vec<Entry>>,
        /// How long each write takes.
        slow: Duration,
    }

    #[async_trait::async_trait]
    impl History for Fake {
        async fn record(&self, entries: &[Entry]) -> Result<(), Error> {
            tokio::time::sleep(self.slow).await;
            if self.down.load(Ordering::Relaxed) {
                return Err(Error::Postgres("connection refused".into()));
            }
            if entries.iter().any(|e| e.delivery_id() == self.bad.as_ref()) {
                return Err(Error::Refused("invalid byte sequence".into()));
            }
            self.taken.lock().unwrap().extend(entries.iter().cloned());
            Ok(())
        }
        async fn delivery(&self, _: &DeliveryId) -> Result<Option<(DeliverySummary, Vec<AttemptRecord>)>, Error> {
            Ok(None)
        }
        async fn event(&self, _: Option<&TenantId>, _: &EventId) -> Result<Vec<DeliverySummary>, Error> {
            Ok(Vec::new())
        }
        async fn event_record(&self, _: Option<&TenantId>, _: &EventId) -> Result<Option<EventRecord>, Error> {
            Ok(None)
        }
        async fn list(&self, _: &ListFilter, _: Option<&str>, _: usize) -> Result<Page<DeliverySummary>, Error> {
            Ok(Page {
                items: Vec::new(),
                next_cursor: None,
            })
        }
        async fn stats(&self, _: &SubscriptionName) -> Result<SubscriptionStats, Error> {
            Ok(SubscriptionStats::default())
        }
        async fn activity(&self, _: Option<&TenantId>, from: Millis, to: Millis) -> Result<Activity, Error> {
            Ok(activity::assemble(&activity::window_minutes(from, to), Vec::new()))
        }
        async fn trim(&self, _: Millis, _: Duration, _: usize) -> Result<u64, Error> {
            Ok(0)
        }
    }

    fn parked(n: i64) -> Entry {
        Entry::State {
            id: DeliveryId::new(0),
            state: DeliveryState::Parked,
            at: n,
            note: None,
        }
    }

    /// The times of the state entries a store took, in order.
    fn ats(store: &Fake) -> Vec<Millis> {
        store
            .taken
            .lock()
            .unwrap()
            .iter()
            .map(|e| match e {
                Entry::State { at, .. } => *at,
                _ => -1,
            })
            .collect()
    }

    async fn until(what: &str, check: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn the_writer_spools_while_the_store_fails_and_catches_up_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Fake::default());
        store.down.store(true, Ordering::Relaxed);
        let stop = CancellationToken::new();
        let metrics = Arc::new(Metrics::new());
        let spool = Spool::open(dir.path(), 1 << 20, 1 << 20);
        let (recorder, writer) = Recorder::start(store.clone(), spool, metrics.clone(), stop.clone());
        for n in 0..50 {
            assert!(recorder.record(parked(n)), "the recorder never waits, never drops");
            tokio::task::yield_now().await;
        }
        let status = recorder.status().clone();
        until("the store's failure seen, all 50 spooled", || {
            status.degraded() && status.spooled() == 50
        })
        .await;
        assert_eq!(status.health().error.as_deref(), Some("postgres: connection refused"));
        assert!(metrics.render().contains("hookd_history_degraded 1"));
        store.down.store(false, Ordering::Relaxed);
        until("the store has them", || store.taken.lock().unwrap().len() == 50).await;
        assert_eq!(ats(&store), (0..50).collect::<Vec<_>>(), "in the order they happened");
        until("back to ok", || !status.degraded()).await;
        assert_eq!((status.spooled(), status.dropped()), (0, 0));
        stop.cancel();
        writer.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_slower_than_the_entries_makes_the_spool_longer_and_drops_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Fake {
            slow: Duration::from_millis(2),
            ..Fake::default()
        });
        let stop = CancellationToken::new();
        // Little memory: the spool goes to disk too.
        let spool = Spool::open(dir.path(), 1 << 20, 1 << 30);
        let (recorder, writer) = Recorder::start(store.clone(), spool, Arc::new(Metrics::new()), stop.clone());
        // More than the recorders' channel holds, faster than the store
        // takes them (512 per 2 ms write at best).
        let n = RECORD_BACKLOG as i64 * 3 / 2;
        // The writer empties the channel into the spool while the store is
        // slow; a loaded machine may not run it for a while, so the channel
        // (bounded: it drops what does not fit, by design) is given room.
        for at in 0..n {
            if recorder.room() == 0 {
                until("room in the writer's channel", || recorder.room() > 0).await;
            }
            assert!(recorder.record(parked(at)), "entry {at} was not taken");
        }
        until("the store has them all", || {
            store.taken.lock().unwrap().len() == n as usize
        })
        .await;
        assert_eq!(ats(&store), (0..n).collect::<Vec<_>>(), "in order");
        assert_eq!(recorder.status().dropped(), 0);
        stop.cancel();
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn an_entry_the_store_refuses_is_dropped_alone_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let bad = DeliveryId::new(3);
        let store = Arc::new(Fake {
            bad: Some(bad.clone()),
            ..Fake::default()
        });
        let stop = CancellationToken::new();
        let metrics = Arc::new(Metrics::new());
        let spool = Spool::open(dir.path(), 1 << 20, 1 << 20);
        let (recorder, writer) = Recorder::start(store.clone(), spool, metrics.clone(), stop.clone());
        let poison = Entry::State {
            id: bad,
            state: DeliveryState::Parked,
            at: 99,
            note: None,
        };
        recorder.record(parked(1));
        recorder.record(poison);
        recorder.record(parked(2));
        stop.cancel();
        writer.await.unwrap();
        assert_eq!(ats(&store), [1, 2]);
        assert_eq!(recorder.status().dropped(), 1);
        assert!(
            metrics.render().contains("hookd_history_dropped_total 1"),
            "{}",
            metrics.render()
        );
    }

    #[tokio::test]
    async fn a_stop_while_the_store_fails_leaves_the_entries_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Fake::default());
        store.down.store(true, Ordering::Relaxed);
        let stop = CancellationToken::new();
        let spool = Spool::open(dir.path(), 1 << 20, 1 << 20);
        let (recorder, writer) = Recorder::start(store.clone(), spool, Arc::new(Metrics::new()), stop.clone());
        for n in 0..5 {
            recorder.record(parked(n));
        }
        until("spooled", || recorder.status().spooled() == 5).await;
        stop.cancel();
        writer.await.unwrap();
        assert!(store.taken.lock().unwrap().is_empty());

        // The next start writes them first.
        store.down.store(false, Ordering::Relaxed);
        let stop = CancellationToken::new();
        let spool = Spool::open(dir.path(), 1 << 20, 1 << 20);
        assert_eq!(spool.entries(), 5);
        let (recorder, writer) = Recorder::start(store.clone(), spool, Arc::new(Metrics::new()), stop.clone());
        recorder.record(parked(5));
        until("all written", || store.taken.lock().unwrap().len() == 6).await;
        assert_eq!(ats(&store), (0..6).collect::<Vec<_>>());
        stop.cancel();
        writer.await.unwrap();
    }
}
