//! Long-running tasks, supervised: a task that panics (or ends while the
//! process is not stopping) is logged with its name, counted
//! (`hookd_task_restarts_total{task}`), shown down in `/readyz`, and
//! started again after a backoff (100 ms, doubling to 30 s; back to 100 ms
//! once a run lasted a minute), so one bug in a sweep or a loop never
//! silently leaves a process without it.
//!
//! A task is made again by its factory, from the shared handles it was
//! made from (the queue, the catalogue, the metrics): what it held only in
//! its own future is gone with the panic, which is why every such task
//! keeps its lasting state in the stores and re-reads it as it starts.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::model::{now_ms, Millis};
use crate::telemetry::Metrics;

/// The first wait before a restart.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait before a restart.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run this long resets the backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Which supervised tasks are down now, for `/readyz`. Shared by every
/// supervisor of a process.
#[derive(Debug, Default)]
pub struct TaskHealth {
    down: Mutex<BTreeMap<&'static str, Down>>,
}

/// A task waiting to be started again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Down {
    /// The task's name (`dispatcher`, `catalog`, …).
    pub task: &'static str,
    /// When it went down.
    pub since: Millis,
    /// Its panic's message, or why it ended.
    pub error: String,
}

impl TaskHealth {
    /// The tasks down now, by name.
    pub fn down(&self) -> Vec<Down> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, Down>> {
        self.down.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Runs the task `make` builds on `tracker` until `stop`, building and
/// starting it again whenever it panics or ends before `stop` (see the
/// module docs).
pub fn supervise<F, Fut>(
    tracker: &TaskTracker,
    task: &'static str,
    health: Arc<TaskHealth>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    mut make: F,
) where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tracker.spawn(async move {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let started = tokio::time::Instant::now();
            let outcome = tokio::spawn(make()).await;
            if stop.is_cancelled() {
                if let Err(e) = outcome.as_ref().map_err(|e| e.is_panic()) {
                    if e {
                        tracing::error!(task, "task panicked while stopping");
                    }
                }
                return;
            }
            let error = match outcome {
                Ok(()) => "it ended before the process stopped".to_owned(),
                Err(e) if e.is_panic() => panic_message(e.into_panic()),
                Err(_) => "it was cancelled".to_owned(),
            };
            if started.elapsed() >= HEALTHY_RUN {
                backoff = FIRST_BACKOFF;
            }
            tracing::error!(task, error = %crate::telemetry::escape(&error), retry_in = ?backoff,
                "task failed; it starts again");
            metrics.task_restarted(task);
            health.lock().insert(
                task,
                Down {
                    task,
                    since: now_ms(),
                    error,
                },
            );
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.cancelled() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            health.lock().remove(task);
        }
    });
}

/// The text of a panic's payload.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => (*s).to_owned(),
            Err(_) => "a panic without a message".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A task that panics on its first two runs is started again each
    /// time, counted, and runs on after; once running it is not down.
    #[tokio::test]
    async fn a_panicking_task_is_counted_and_started_again() {
        let tracker = TaskTracker::new();
        let health = Arc::new(TaskHealth::default());
        let metrics = Arc::new(Metrics::new());
        let stop = CancellationToken::new();
        let runs = Arc::new(AtomicU32::new(0));
        let (running, mut is_running) = tokio::sync::mpsc::unbounded_channel();
        {
            let runs = runs.clone();
            let stop = stop.clone();
            supervise(
                &tracker,
                "sweep",
                health.clone(),
                metrics.clone(),
                stop.clone(),
                move || {
                    let run = runs.fetch_add(1, Ordering::SeqCst);
                    let (running, stop) = (running.clone(), stop.clone());
                    async move {
                        if run < 2 {
                            panic!("bug number {run}");
                        }
                        running.send(()).ok();
                        stop.cancelled().await;
                    }
                },
            );
        }
        is_running.recv().await.expect("the third run starts and keeps running");
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert!(health.down().is_empty(), "{:?}", health.down());
        let text = metrics.render();
        assert!(text.contains("hookd_task_restarts_total{task=\"sweep\"} 2"), "{text}");
        stop.cancel();
        tracker.close();
        tracker.wait().await;
        assert_eq!(runs.load(Ordering::SeqCst), 3, "a stop is not a failure");
    }

    #[tokio::test]
    async fn a_task_is_shown_down_while_it_waits_to_start_again() {
        let tracker = TaskTracker::new();
        let health = Arc::new(TaskHealth::default());
        let stop = CancellationToken::new();
        let (ran, mut runs) = tokio::sync::mpsc::unbounded_channel();
        supervise(
            &tracker,
            "trim",
            health.clone(),
            Arc::new(Metrics::new()),
            stop.clone(),
            move || {
                let ran = ran.clone();
                async move {
                    ran.send(()).ok();
                    panic!("the log is {}", "corrupt");
                }
            },
        );
        runs.recv().await.unwrap();
        let down = loop {
            let down = health.down();
            if !down.is_empty() {
                break down;
            }
            tokio::task::yield_now().await;
        };
        assert_eq!(down[0].task, "trim");
        assert_eq!(down[0].error, "the log is corrupt");
        stop.cancel();
        tracker.close();
        tracker.wait().await;
    }
}
