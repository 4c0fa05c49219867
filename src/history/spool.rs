//! The spool: delivery log entries waiting while the log store is slow or
//! down, so deliveries never wait for it and nothing is silently lost.
//!
//! The [`Recorder`](super::Recorder)'s writer puts a batch the store did
//! not take (an error, or no answer within [`WRITE_TIMEOUT`]) here, and
//! every batch after it while anything is waiting, so entries reach the
//! store in the order they happened. It retries the oldest batch with a
//! growing pause (up to [`RETRY_MAX`]) and, once the store takes it,
//! drains the rest as fast as the store allows.
//!
//! The spool is one first-in first-out line of batches: its front in
//! memory, up to `history.spool_memory` bytes, then segments on disk of up
//! to [`SEGMENT_BYTES`] each (JSON lines, one batch a line) in a
//! directory of this process's under `queue.data_dir/history.spool/`,
//! up to `history.spool_disk` bytes. A batch beyond both is dropped,
//! counted in `hookd_history_dropped_total` and logged. At a stop, what
//! is still in memory is written to disk, and the next start (of any
//! process that takes the directory) sends it on: a segment file is
//! removed only once every batch in it was written to the store.
//!
//! The directory is `history.spool/<n>`, the first `n` whose lock file no
//! other process holds, so processes sharing a data directory never share
//! a spool, and a stopped process's spool is taken up by the next one.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::Entry;
use crate::model::Millis;

/// Longest a write to the store may take before its batch is spooled.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// First pause before retrying the store after a failure; it doubles up
/// to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_millis(250);

/// Longest pause between retries while the store is down.
pub const RETRY_MAX: Duration = Duration::from_secs(5);

/// Largest spool segment file; the next batch starts a new one.
pub const SEGMENT_BYTES: u64 = 16 << 20;

/// Most spool directories (`history.spool/0` …) tried for a free one.
const SLOTS: usize = 64;

/// Number of the first segment file of an empty spool: room below it for
/// the memory persisted at stops ([`Spool::persist`]).
const FIRST_SEGMENT: u64 = 1 << 32;

/// The spool's directory name under `queue.data_dir`.
pub const DIR_NAME: &str = "history.spool";

/// How the delivery log's writing stands, for `/readyz`, the metrics and
/// the console. Shared by the writer and its readers.
#[derive(Debug, Default)]
pub struct LogStatus {
    /// Whether entries are waiting in the spool because the store failed.
    degraded: AtomicBool,
    /// When the store last failed, ms since the epoch (0: never).
    failed_at: AtomicI64,
    /// Entries waiting in the spool.
    spooled: AtomicU64,
    /// Bytes of them on disk.
    spooled_disk_bytes: AtomicU64,
    /// Entries dropped since start: beyond the spool, or refused by the
    /// store for good.
    dropped: AtomicU64,
    /// The store's last error, while degraded.
    error: Mutex<Option<String>>,
}

/// A snapshot of [`LogStatus`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LogHealth {
    /// `ok`, or `degraded` while entries wait for the store.
    pub state: &'static str,
    /// Entries waiting.
    pub spooled: u64,
    /// Bytes of them on disk.
    pub spooled_disk_bytes: u64,
    /// Entries dropped since start.
    pub dropped: u64,
    /// When the store last failed (RFC 3339), if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<String>,
    /// The store's error, while degraded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl LogStatus {
    /// Whether the log is degraded (entries waiting for the store).
    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    /// Entries dropped since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Entries waiting in the spool.
    pub fn spooled(&self) -> u64 {
        self.spooled.load(Ordering::Relaxed)
    }

    /// A snapshot for `/readyz`.
    pub fn health(&self) -> LogHealth {
        let degraded = self.degraded();
        let failed_at = self.failed_at.load(Ordering::Relaxed);
        LogHealth {
            state: if degraded { "degraded" } else { "ok" },
            spooled: self.spooled(),
            spooled_disk_bytes: self.spooled_disk_bytes.load(Ordering::Relaxed),
            dropped: self.dropped(),
            failed_at: if failed_at > 0 {
                crate::model::time::format_ms(failed_at)
            } else {
                None
            },
            error: if degraded {
                self.error.lock().unwrap_or_else(|e| e.into_inner()).clone()
            } else {
                None
            },
        }
    }

    pub(crate) fn set_degraded(&self, error: String, at: Millis) {
        self.degraded.store(true, Ordering::Relaxed);
        self.failed_at.store(at, Ordering::Relaxed);
        *self.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
    }

    pub(crate) fn set_ok(&self) {
        self.degraded.store(false, Ordering::Relaxed);
        *self.error.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub(crate) fn set_spooled(&self, entries: u64, disk_bytes: u64) {
        self.spooled.store(entries, Ordering::Relaxed);
        self.spooled_disk_bytes.store(disk_bytes, Ordering::Relaxed);
    }

    pub(crate) fn add_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }
}

/// About how many bytes `entry` holds, for the memory bound.
pub(crate) fn approx_size(entry: &Entry) -> u64 {
    let pairs = |h: &[(String, String)]| h.iter().map(|(n, v)| n.len() + v.len() + 8).sum::<usize>();
    let size = match entry {
        Entry::Event(record) => record.body.len() + 160,
        Entry::Attempted { attempt, .. } => {
            attempt.response_body.len()
                + pairs(&attempt.request_headers)
                + pairs(&attempt.response_headers)
                + attempt.error.as_ref().map_or(0, String::len)
                + 240
        }
        Entry::Created(_) => 240,
        Entry::State { note, .. } => note.as_ref().map_or(0, String::len) + 96,
    };
    size as u64
}

fn batch_size(batch: &[Entry]) -> u64 {
    batch.iter().map(approx_size).sum()
}

/// A segment file on disk.
struct Segment {
    path: PathBuf,
    bytes: u64,
    entries: u64,
}

/// The spool (see the module docs).
pub struct Spool {
    /// The front of the line, oldest first, with each batch's size.
    memory: VecDeque<(Vec<Entry>, u64)>,
    memory_bytes: u64,
    memory_limit: u64,
    /// Batches of `memory` (from its front) read from `loaded`.
    loaded_left: usize,
    /// The segment whose batches are at the front of memory; removed once
    /// they are all written.
    loaded: Option<Segment>,
    /// The rest of the line, oldest first, on disk.
    segments: VecDeque<Segment>,
    disk_bytes: u64,
    disk_limit: u64,
    /// `queue.data_dir/history.spool`, and this process's slot in it once
    /// taken (holding its lock).
    root: PathBuf,
    slot: Option<(PathBuf, File)>,
    /// Number of the next segment file.
    next_segment: u64,
    /// Entries in the whole line.
    entries: u64,
    /// Batches at the front being written ([`Spool::take_front`]): never
    /// merged into.
    busy: usize,
    /// Most entries a pushed batch is merged up to.
    merge_up_to: usize,
}

impl Spool {
    /// An empty spool under `data_dir`, holding `memory_limit` bytes in
    /// memory and `disk_limit` on disk. Takes over a slot left with
    /// segments by a stopped process, if there is one.
    pub fn open(data_dir: &Path, memory_limit: u64, disk_limit: u64) -> Spool {
        let mut spool = Spool {
            memory: VecDeque::new(),
            memory_bytes: 0,
            memory_limit,
            loaded_left: 0,
            loaded: None,
            segments: VecDeque::new(),
            disk_bytes: 0,
            disk_limit,
            root: data_dir.join(DIR_NAME),
            slot: None,
            next_segment: FIRST_SEGMENT,
            entries: 0,
            busy: 0,
            merge_up_to: 512,
        };
        if spool.root.is_dir() {
            if let Err(e) = spool.adopt() {
                tracing::error!(dir = %spool.root.display(), error = %e, "cannot read the delivery log spool left by an earlier run");
            }
        }
        spool
    }

    /// Takes the first slot that is free and holds segments.
    fn adopt(&mut self) -> std::io::Result<()> {
        for n in 0..SLOTS {
            let dir = self.root.join(n.to_string());
            if !dir.is_dir() {
                continue;
            }
            let mut names: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)?
                .flatten()
                .filter_map(|e| {
                    let path = e.path();
                    let seq = path.file_name()?.to_str()?.strip_suffix(".jsonl")?.parse().ok()?;
                    Some((seq, path))
                })
                .collect();
            if names.is_empty() {
                continue;
            }
            let Some(lock) = lock_slot(&dir)? else { continue };
            names.sort();
            for (seq, path) in names {
                let (bytes, entries) = count_segment(&path)?;
                self.disk_bytes += bytes;
                self.entries += entries;
                self.next_segment = self.next_segment.max(seq + 1);
                self.segments.push_back(Segment { path, bytes, entries });
            }
            tracing::warn!(
                dir = %dir.display(),
                entries = self.entries,
                "delivery log entries spooled by an earlier run: writing them to the log store"
            );
            self.slot = Some((dir, lock));
            return Ok(());
        }
        Ok(())
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Entries waiting.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Bytes on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes
    }

    /// Puts `batch` at the back of the line: in memory if nothing is on
    /// disk and it fits, else on disk. Returns how many entries were
    /// dropped because neither had room (with the error, if disk failed).
    pub fn push(&mut self, batch: Vec<Entry>) -> (u64, Option<String>) {
        if batch.is_empty() {
            return (0, None);
        }
        let size = batch_size(&batch);
        let n = batch.len() as u64;
        if self.segments.is_empty() && self.memory_bytes + size <= self.memory_limit {
            self.memory_bytes += size;
            self.entries += n;
            // Small batches are merged (never into one being written), so
            // the store gets few, full ones.
            let merge = self.memory.len() > self.busy
                && self
                    .memory
                    .back()
                    .is_some_and(|(tail, _)| tail.len() + batch.len() <= self.merge_up_to);
            if merge {
                let (tail, tail_size) = self.memory.back_mut().expect("a tail");
                tail.extend(batch);
                *tail_size += size;
            } else {
                self.memory.push_back((batch, size));
            }
            return (0, None);
        }
        match self.append(&batch) {
            Ok(true) => {
                self.entries += n;
                (0, None)
            }
            Ok(false) => (n, None),
            Err(e) => (n, Some(format!("cannot spool to {}: {e}", self.root.display()))),
        }
    }

    /// Appends `batch` to the last segment (a new one when full); false if
    /// the disk bound leaves no room.
    fn append(&mut self, batch: &[Entry]) -> std::io::Result<bool> {
        let line = serde_json::to_vec(batch).map_err(std::io::Error::other)?;
        let bytes = line.len() as u64 + 1;
        if self.disk_bytes + bytes > self.disk_limit {
            return Ok(false);
        }
        let dir = self.slot_dir()?;
        let need_new = self.segments.back().is_none_or(|s| s.bytes + bytes > SEGMENT_BYTES);
        if need_new {
            let path = dir.join(format!("{:020}.jsonl", self.next_segment));
            self.next_segment += 1;
            self.segments.push_back(Segment {
                path,
                bytes: 0,
                entries: 0,
            });
        }
        let segment = self.segments.back_mut().expect("a segment");
        let mut file = private_file().create(true).append(true).open(&segment.path)?;
        file.write_all(&line)?;
        file.write_all(b"\n")?;
        segment.bytes += bytes;
        segment.entries += batch.len() as u64;
        self.disk_bytes += bytes;
        Ok(true)
    }

    /// This process's slot directory, taking one on first use.
    fn slot_dir(&mut self) -> std::io::Result<PathBuf> {
        if let Some((dir, _)) = &self.slot {
            return Ok(dir.clone());
        }
        create_private_dir(&self.root)?;
        for n in 0..SLOTS {
            let dir = self.root.join(n.to_string());
            create_private_dir(&dir)?;
            if let Some(lock) = lock_slot(&dir)? {
                self.slot = Some((dir.clone(), lock));
                return Ok(dir);
            }
        }
        Err(std::io::Error::other(format!(
            "all {SLOTS} spool directories are in use by other processes"
        )))
    }

    /// The oldest batch, reading the next segment into memory when memory
    /// is empty. A segment that cannot be read is skipped (and reported).
    pub fn front(&mut self) -> Option<&[Entry]> {
        while self.memory.is_empty() {
            let segment = self.segments.pop_front()?;
            self.disk_bytes -= segment.bytes;
            match read_segment(&segment.path) {
                Ok(batches) => {
                    self.loaded_left = batches.len();
                    for batch in batches {
                        let size = batch_size(&batch);
                        self.memory_bytes += size;
                        self.memory.push_back((batch, size));
                    }
                    if self.loaded_left == 0 {
                        let _ = std::fs::remove_file(&segment.path);
                    } else {
                        self.loaded = Some(segment);
                    }
                }
                Err(e) => {
                    tracing::error!(file = %segment.path.display(), error = %e, entries = segment.entries, "a delivery log spool segment cannot be read: its entries are lost");
                    self.entries -= segment.entries.min(self.entries);
                }
            }
        }
        self.memory.front().map(|(batch, _)| &batch[..])
    }

    /// The oldest batches, up to `max` entries (at least one batch),
    /// joined, and how many batches they are; they stay in the spool,
    /// unmerged into, until [`Spool::pop_front_n`] or [`Spool::release`].
    pub fn take_front(&mut self, max: usize) -> Option<(Vec<Entry>, usize)> {
        self.front()?;
        let mut out: Vec<Entry> = Vec::new();
        let mut count = 0;
        for (batch, _) in &self.memory {
            if count > 0 && out.len() + batch.len() > max {
                break;
            }
            out.extend(batch.iter().cloned());
            count += 1;
        }
        self.busy = count;
        Some((out, count))
    }

    /// Removes the `n` oldest batches (written, or given up on).
    pub fn pop_front_n(&mut self, n: usize) {
        for _ in 0..n {
            self.pop_front();
        }
        self.busy = 0;
    }

    /// The batches [`Spool::take_front`] gave were not written: they stay.
    pub fn release(&mut self) {
        self.busy = 0;
    }

    /// Removes the oldest batch (it was written, or given up on).
    pub fn pop_front(&mut self) {
        let Some((batch, size)) = self.memory.pop_front() else {
            return;
        };
        self.memory_bytes -= size;
        self.entries -= (batch.len() as u64).min(self.entries);
        if self.loaded_left > 0 {
            self.loaded_left -= 1;
            if self.loaded_left == 0 {
                if let Some(segment) = self.loaded.take() {
                    let _ = std::fs::remove_file(&segment.path);
                }
            }
        }
    }

    /// Writes what is in memory to disk, ahead of the segments there, so
    /// the next start sends it on; returns how many entries could not be
    /// kept.
    pub fn persist(&mut self) -> u64 {
        let batches: Vec<Vec<Entry>> = self.memory.drain(..).map(|(b, _)| b).collect();
        self.memory_bytes = 0;
        self.loaded_left = 0;
        let loaded = self.loaded.take();
        if batches.is_empty() {
            return 0;
        }
        let n: u64 = batches.iter().map(|b| b.len() as u64).sum();
        let result = (|| -> std::io::Result<()> {
            let dir = self.slot_dir()?;
            // Named before every segment still on disk, as it is older than
            // them: in place of the segment its front was read from (the
            // rest of that segment is in it), or just before the first.
            let path = match &loaded {
                Some(segment) => segment.path.clone(),
                None => {
                    let first = self
                        .segments
                        .iter()
                        .filter_map(|s| {
                            s.path
                                .file_name()?
                                .to_str()?
                                .strip_suffix(".jsonl")?
                                .parse::<u64>()
                                .ok()
                        })
                        .min()
                        .unwrap_or(self.next_segment);
                    dir.join(format!("{:020}.jsonl", first.saturating_sub(1)))
                }
            };
            let tmp = dir.join("persist.tmp");
            let mut file = private_file().create(true).write(true).truncate(true).open(&tmp)?;
            for batch in &batches {
                let line = serde_json::to_vec(batch).map_err(std::io::Error::other)?;
                file.write_all(&line)?;
                file.write_all(b"\n")?;
            }
            file.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        match result {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!(error = %e, entries = n, "cannot spool the delivery log's waiting entries to disk: they are lost");
                n
            }
        }
    }
}

/// Options opening a file created readable and writable by its owner
/// only (0600): the spool holds event bodies and response excerpts.
fn private_file() -> OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = OpenOptions::new();
    options.mode(0o600);
    options
}

/// Creates `dir` readable by its owner only, if missing.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Locks a slot directory for this process; `None` if another holds it.
fn lock_slot(dir: &Path) -> std::io::Result<Option<File>> {
    let file = private_file()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Bytes and entries of a segment file.
fn count_segment(path: &Path) -> std::io::Result<(u64, u64)> {
    let bytes = std::fs::metadata(path)?.len();
    let entries = read_segment(path)?.iter().map(|b| b.len() as u64).sum();
    Ok((bytes, entries))
}

/// The batches of a segment file. A line that does not parse (a write cut
/// short by a crash) is skipped with an error.
fn read_segment(path: &Path) -> std::io::Result<Vec<Vec<Entry>>> {
    let mut out = Vec::new();
    for (n, line) in BufReader::new(File::open(path)?).lines().enumerate() {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        match serde_json::from_str::<Vec<Entry>>(&line) {
            Ok(batch) => out.push(batch),
            Err(e) => {
                tracing::error!(file = %path.display(), line = n + 1, error = %e, "a spooled delivery log batch cannot be read: skipped");
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{DeliveryState, EventRecord};
    use crate::ingest::EventId;
    use crate::queue::DeliveryId;

    fn state(n: u64) -> Entry {
        Entry::State {
            id: DeliveryId::new(0),
            state: DeliveryState::Parked,
            at: n as Millis,
            note: Some("x".repeat(100)),
        }
    }

    fn drain(spool: &mut Spool) -> Vec<Millis> {
        let mut out = Vec::new();
        while let Some(batch) = spool.front() {
            for entry in batch {
                match entry {
                    Entry::State { at, .. } => out.push(*at),
                    _ => panic!("only states pushed"),
                }
            }
            spool.pop_front();
        }
        out
    }

    #[test]
    fn the_line_keeps_its_order_across_memory_and_disk() {
        let dir = tempfile::tempdir().unwrap();
        // Room for about 3 batches of 2 in memory; the rest on disk.
        let mut spool = Spool::open(dir.path(), 1_200, 1 << 20);
        for n in 0..10u64 {
            assert_eq!(spool.push(vec![state(2 * n), state(2 * n + 1)]), (0, None));
        }
        assert_eq!(spool.entries(), 20);
        assert!(spool.disk_bytes() > 0, "some went to disk");
        // Taking from the front while pushing at the back keeps the order.
        let first = spool.front().unwrap().to_vec();
        spool.pop_front();
        spool.push(vec![state(20)]);
        let mut seen: Vec<Millis> = first
            .iter()
            .map(|e| match e {
                Entry::State { at, .. } => *at,
                _ => unreachable!(),
            })
            .collect();
        seen.extend(drain(&mut spool));
        assert_eq!(seen, (0..=20).collect::<Vec<_>>());
        assert!(spool.is_empty());
        let left: Vec<_> = std::fs::read_dir(dir.path().join(DIR_NAME).join("0"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
            .collect();
        assert!(left.is_empty(), "segments are removed once written: {left:?}");
    }

    #[test]
    fn spool_files_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let modes = |dir: &Path| -> Vec<(String, u32)> {
            std::fs::read_dir(dir.join(DIR_NAME).join("0"))
                .unwrap()
                .flatten()
                .map(|e| {
                    let mode = e.metadata().unwrap().permissions().mode() & 0o777;
                    (e.file_name().to_string_lossy().into_owned(), mode)
                })
                .collect()
        };
        {
            // Segments written as they come, beyond memory.
            let mut spool = Spool::open(dir.path(), 0, 1 << 20);
            spool.push(vec![state(1)]);
            let files = modes(dir.path());
            assert!(files.iter().any(|(n, _)| n.ends_with(".jsonl")), "{files:?}");
            assert!(files.iter().all(|(_, m)| *m == 0o600), "{files:?}");
        }
        // And what a stop persists from memory.
        let other = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(other.path(), 1 << 20, 1 << 20);
        spool.push(vec![state(2)]);
        assert_eq!(spool.persist(), 0);
        let files = modes(other.path());
        assert!(files.iter().any(|(n, _)| n.ends_with(".jsonl")), "{files:?}");
        assert!(files.iter().all(|(_, m)| *m == 0o600), "{files:?}");
    }

    #[test]
    fn beyond_both_bounds_batches_are_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 500, 1_000);
        let mut dropped = 0;
        for n in 0..20u64 {
            dropped += spool.push(vec![state(n)]).0;
        }
        assert!(dropped > 0 && dropped < 20, "{dropped}");
        assert_eq!(spool.entries() + dropped, 20);
        assert_eq!(
            drain(&mut spool),
            (0..(20 - dropped) as Millis).collect::<Vec<_>>(),
            "the oldest are kept"
        );
    }

    #[test]
    fn a_stop_persists_memory_ahead_of_disk_and_the_next_start_sends_it() {
        let dir = tempfile::tempdir().unwrap();
        let event = EventRecord {
            id: EventId::parse("evt_1").unwrap(),
            event_type: "link.clicked".into(),
            created_at: 5,
            body: bytes::Bytes::from_static(b"{\"\xff\":1}"),
            tenant: None,
        };
        {
            let mut spool = Spool::open(dir.path(), 1_200, 1 << 20);
            for n in 0..10u64 {
                spool.push(vec![state(n)]);
            }
            spool.push(vec![Entry::Event(event.clone())]);
            // One batch of a loaded segment taken, as if written.
            while spool.memory.len() > 1 {
                spool.front();
                spool.pop_front();
            }
            assert_eq!(spool.persist(), 0);
        }
        let mut spool = Spool::open(dir.path(), 1_200, 1 << 20);
        let mut got = Vec::new();
        while let Some(batch) = spool.front() {
            got.extend(batch.to_vec());
            spool.pop_front();
        }
        let last = got.pop().unwrap();
        assert_eq!(last, Entry::Event(event), "bodies survive byte for byte");
        let ats: Vec<Millis> = got
            .iter()
            .map(|e| match e {
                Entry::State { at, .. } => *at,
                _ => unreachable!(),
            })
            .collect();
        assert!(ats.windows(2).all(|w| w[0] < w[1]), "in order: {ats:?}");
        assert_eq!(*ats.last().unwrap(), 9);
    }

    #[test]
    fn processes_sharing_a_data_dir_take_their_own_slots() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Spool::open(dir.path(), 0, 1 << 20);
        let mut b = Spool::open(dir.path(), 0, 1 << 20);
        a.push(vec![state(1)]);
        b.push(vec![state(2)]);
        let (da, db) = (a.slot.as_ref().unwrap().0.clone(), b.slot.as_ref().unwrap().0.clone());
        assert_ne!(da, db);
        assert_eq!(drain(&mut a), [1]);
        assert_eq!(drain(&mut b), [2]);
    }
}
