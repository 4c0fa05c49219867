//! The epoch ticker: a thread that advances the engine's epoch every
//! [`TICK`] while any guest code runs, and sleeps otherwise.
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
    /// Guest calls running now; the thread parks while this is zero.
    active: AtomicUsize,
}

/// Marks one guest call as running for as long as it lives.
pub(crate) struct Active<'a> {
    ticker: &'a Ticker,
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.ticker.state.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Ticker {
    /// Starts the thread for `engine`.
    pub(crate) fn start(engine: Engine) -> std::io::Result<Ticker> {
        let state = Arc::new(TickerState {
            stop: AtomicBool::new(false),
            active: AtomicUsize::new(0),
        });
        let shared = state.clone();
        let thread = thread::Builder::new()
            .name("hookd-plugin-epoch".into())
            .spawn(move || {
                while !shared.stop.load(Ordering::Acquire) {
                    if shared.active.load(Ordering::Acquire) == 0 {
                        // Woken by the first call to start, or by drop.
                        thread::park();
                    } else {
                        thread::sleep(TICK);
                        engine.increment_epoch();
                    }
                }
            })?;
        Ok(Ticker {
            state,
            thread: Some(thread),
        })
    }

    /// Marks a guest call as running until the returned guard is dropped.
    pub(crate) fn active(&self) -> Active<'_> {
        if self.state.active.fetch_add(1, Ordering::AcqRel) == 0 {
            if let Some(thread) = &self.thread {
                thread.thread().unpark();
            }
        }
        Active { ticker: self }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}
