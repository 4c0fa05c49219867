//! The epoch ticker: a thread that advances the engine's epoch every
//! [`TICK`] while guest code runs, and parks after [`IDLE_TICKS`] ticks
//! without any (so an idle hookd does not wake up a thousand times a
//! second, and a busy one does not pay a wake-up per call).
//!
//! A guest call's deadline is a number of ticks (see `Store` setup in
//! `mod.rs`); the ticker is what makes them pass. It stops when the last
//! owner of the engine (the `Plugins` and every `Plugin`) is gone.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use wasmtime::Engine;

/// One epoch tick: the granularity of plugin deadlines.
pub(crate) const TICK: Duration = Duration::from_millis(1);

/// Ticks without any guest call before the thread parks.
const IDLE_TICKS: u32 = 100;

/// Owns the ticker thread; dropping it stops and joins the thread.
pub(crate) struct Ticker {
    /// Shared with the thread.
    state: Arc<TickerState>,
    /// The thread, joined on drop.
    thread: Option<JoinHandle<()>>,
}

struct TickerState {
    /// Set on drop: the thread exits.
    stop: AtomicBool,
    /// Guest calls running now; the thread parks when this stays zero.
    active: AtomicUsize,
    /// Whether the thread is (about to be) parked and needs an unpark.
    parked: AtomicBool,
}

/// Marks one guest call as running for as long as it lives.
pub(crate) struct Active<'a> {
    ticker: &'a Ticker,
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.ticker.state.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Ticker {
    /// Starts the thread for `engine`.
    pub(crate) fn start(engine: Engine) -> std::io::Result<Ticker> {
        let state = Arc::new(TickerState {
            stop: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            parked: AtomicBool::new(false),
        });
        let shared = state.clone();
        let thread = thread::Builder::new()
            .name("hookd-plugin-epoch".into())
            .spawn(move || {
                let mut idle = 0;
                while !shared.stop.load(Ordering::SeqCst) {
                    if shared.active.load(Ordering::SeqCst) > 0 {
                        idle = 0;
                    } else if idle >= IDLE_TICKS {
                        // `parked` is stored before `active` is read again,
                        // and a caller bumps `active` before reading
                        // `parked`: one of the two sees the other, so a
                        // call never runs without ticks.
                        shared.parked.store(true, Ordering::SeqCst);
                        if shared.active.load(Ordering::SeqCst) == 0 && !shared.stop.load(Ordering::SeqCst) {
                            thread::park();
                        }
                        shared.parked.store(false, Ordering::SeqCst);
                        idle = 0;
                        continue;
                    } else {
                        idle += 1;
                    }
                    thread::sleep(TICK);
                    engine.increment_epoch();
                }
            })?;
        Ok(Ticker {
            state,
            thread: Some(thread),
        })
    }

    /// Marks a guest call as running until the returned guard is dropped.
    pub(crate) fn active(&self) -> Active<'_> {
        self.state.active.fetch_add(1, Ordering::SeqCst);
        if self.state.parked.load(Ordering::SeqCst) {
            if let Some(thread) = &self.thread {
                thread.thread().unpark();
            }
        }
        Active { ticker: self }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}
