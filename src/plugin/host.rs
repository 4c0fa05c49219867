//! What a plugin's store holds: the deny-everything WASI context, the memory
//! limiter, the deadline's tick count, the `log` import and captured
//! stdout/stderr.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

/// The host side of the WIT world, generated from `wit/plugin.wit`.
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "transformer",
        exports: { default: async },
    });
}

use bindings::hookd::plugin::log::Level;

/// Longest log message kept; the rest is cut.
const MAX_LOG_MESSAGE: usize = 4096;

/// Bytes of stdout/stderr kept per call (a panic message fits).
const MAX_CAPTURED_OUTPUT: usize = 4096;

/// Per-store state; one store per plugin instance.
pub(crate) struct HostState {
    /// WASI with nothing in it: no preopens, env, args, network; frozen clocks.
    wasi: WasiCtx,
    /// WASI's resource handles (streams, pollables).
    table: ResourceTable,
    /// The memory cap over the instance's memories and tables, and whether
    /// the guest hit it.
    pub(crate) limits: Limits,
    /// Ticks the current call may run before it is interrupted.
    pub(crate) tick_budget: u64,
    /// Ticks the current call has run.
    pub(crate) ticks_used: u64,
    /// Whether the current call was interrupted at its deadline.
    pub(crate) deadline_hit: bool,
    /// Where `log` goes.
    pub(crate) log: LogSink,
    /// What the guest wrote to stdout and stderr during the current call.
    pub(crate) output: CapturedOutput,
}

impl HostState {
    /// A state for one instance of a plugin capped at `memory_limit` bytes.
    pub(crate) fn new(memory_limit: usize, log: LogSink) -> HostState {
        let output = CapturedOutput::default();
        let mut wasi = WasiCtx::builder();
        wasi.stdout(output.clone())
            .stderr(output.clone())
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }));
        HostState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits: Limits::new(memory_limit),
            tick_budget: 0,
            ticks_used: 0,
            deadline_hit: false,
            log,
            output,
        }
    }

    /// Resets the per-call state before a call of `event_id`.
    pub(crate) fn begin_call(&mut self, event_id: &str, tick_budget: u64) {
        self.tick_budget = tick_budget;
        self.ticks_used = 0;
        self.deadline_hit = false;
        self.limits.memory_hit = false;
        self.log.event_id.clear();
        self.log.event_id.push_str(event_id);
        self.output.clear();
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Most table elements one instance may hold, over all its tables.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// The memory cap of one instance, over every linear memory and table of
/// it: wasmtime asks the limiter about each memory separately, so the
/// limiter keeps the instance's running total itself.
pub(crate) struct Limits {
    /// Most bytes of linear memory the instance may hold, all memories
    /// together.
    memory_limit: usize,
    /// Bytes of linear memory the instance holds now, all memories
    /// together (memories never shrink).
    memory_total: usize,
    /// Table elements the instance holds now, all tables together.
    table_total: usize,
    /// Whether a growth past the cap was refused during the current call.
    pub(crate) memory_hit: bool,
}

impl Limits {
    /// A cap of `memory_limit` bytes for one instance.
    pub(crate) fn new(memory_limit: usize) -> Limits {
        Limits {
            memory_limit,
            memory_total: 0,
            table_total: 0,
            memory_hit: false,
        }
    }

    /// Bytes of linear memory the instance holds, all memories together.
    pub(crate) fn memory_total(&self) -> usize {
        self.memory_total
    }
}

/// Raised (as a trap) when a guest grows its memory past the cap.
#[derive(Debug, thiserror::Error)]
#[error("memory limit exceeded")]
pub(crate) struct MemoryLimitHit;

/// Raised (as a trap) when a call runs out of ticks.
#[derive(Debug, thiserror::Error)]
#[error("deadline exceeded")]
pub(crate) struct DeadlineHit;

impl wasmtime::ResourceLimiter for Limits {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        // Called for every memory as it is created (from 0) and grown.
        let total = (self.memory_total - current.min(self.memory_total)).saturating_add(desired);
        if total > self.memory_limit {
            // Trap rather than fail the grow: a guest allocator would turn a
            // failed grow into an abort that looks like any other panic.
            self.memory_hit = true;
            return Err(wasmtime::Error::new(MemoryLimitHit));
        }
        self.memory_total = total;
        Ok(true)
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = (self.table_total - current.min(self.table_total)).saturating_add(desired);
        if total > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        self.table_total = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        16
    }
}

/// A clock stuck at the Unix epoch: plugins get no time source (the event
/// carries its own timestamp), which also keeps them deterministic.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }

    fn now(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }

    fn now(&self) -> u64 {
        0
    }
}

/// Where a plugin's `log` calls go: `tracing`, tagged, rate-limited.
pub(crate) struct LogSink {
    /// The subscription the plugin serves.
    pub(crate) subscription: Arc<str>,
    /// The event of the current call.
    pub(crate) event_id: String,
    /// Shared by every instance of the plugin.
    pub(crate) rate: Arc<RateLimit>,
}

impl LogSink {
    /// Logs `message` at `level` if the plugin's budget allows.
    pub(crate) fn write(&self, level: Level, message: &str) {
        let Some(dropped) = self.rate.admit() else {
            return;
        };
        // The guest's text: escaped, so it cannot forge log lines.
        let message = crate::telemetry::escape(truncate(message, MAX_LOG_MESSAGE));
        let (subscription, event_id) = (&*self.subscription, self.event_id.as_str());
        macro_rules! emit {
            ($level:expr) => {
                tracing::event!(target: "hookd::plugin::guest", $level, subscription, event_id, dropped, "{message}")
            };
        }
        match level {
            Level::Trace => emit!(tracing::Level::TRACE),
            Level::Debug => emit!(tracing::Level::DEBUG),
            Level::Info => emit!(tracing::Level::INFO),
            Level::Warn => emit!(tracing::Level::WARN),
            Level::Error => emit!(tracing::Level::ERROR),
        }
    }
}

/// The `types` interface only defines types; nothing to implement.
impl bindings::hookd::plugin::types::Host for HostState {}

impl bindings::hookd::plugin::log::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        self.log.write(level, &message);
    }
}

/// A per-plugin budget of log messages per second.
pub(crate) struct RateLimit {
    /// Messages allowed per second.
    per_second: u32,
    /// (start of the current second, messages in it, messages dropped since
    /// the last one let through).
    window: Mutex<(Instant, u32, u64)>,
}

impl RateLimit {
    /// A budget of `per_second` messages.
    pub(crate) fn new(per_second: u32) -> RateLimit {
        RateLimit {
            per_second,
            window: Mutex::new((Instant::now(), 0, 0)),
        }
    }

    /// `Some(messages dropped before this one)` if a message may be written now.
    fn admit(&self) -> Option<u64> {
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if now.duration_since(w.0).as_secs() >= 1 {
            *w = (now, 0, w.2);
        }
        if w.1 >= self.per_second {
            w.2 += 1;
            return None;
        }
        w.1 += 1;
        Some(std::mem::take(&mut w.2))
    }
}

/// The first `max` bytes of `text`, cut at a character boundary.
pub(crate) fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Stdout and stderr of one instance, kept in memory up to a bound (the
/// excess is discarded, never an error to the guest).
#[derive(Clone, Default)]
pub(crate) struct CapturedOutput {
    /// The bytes written during the current call.
    buffer: Arc<Mutex<Vec<u8>>>,
}

impl CapturedOutput {
    fn clear(&self) {
        self.buffer.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    /// What was written, on one line.
    pub(crate) fn text(&self) -> String {
        let buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&buffer)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn append(&self, bytes: &[u8]) {
        let mut buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        let room = MAX_CAPTURED_OUTPUT.saturating_sub(buffer.len());
        buffer.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

impl IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CapturedOutput {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CapturedOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for CapturedOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.append(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_admits_the_budget_then_counts_drops() {
        let rate = RateLimit::new(2);
        assert_eq!(rate.admit(), Some(0));
        assert_eq!(rate.admit(), Some(0));
        assert_eq!(rate.admit(), None);
        assert_eq!(rate.admit(), None);
        rate.window.lock().unwrap().0 -= std::time::Duration::from_secs(2);
        assert_eq!(rate.admit(), Some(2), "the next message reports the drops");
    }

    #[test]
    fn the_memory_cap_holds_over_every_memory_of_an_instance() {
        use wasmtime::ResourceLimiter as _;
        const MIB: usize = 1 << 20;
        let mut limits = Limits::new(16 * MIB);
        // Two memories created and grown, each under the cap alone.
        assert!(limits.memory_growing(0, 4 * MIB, None).unwrap());
        assert!(limits.memory_growing(0, 4 * MIB, None).unwrap());
        assert!(limits.memory_growing(4 * MIB, 10 * MIB, None).unwrap());
        assert_eq!(limits.memory_total(), 14 * MIB);
        assert!(!limits.memory_hit);
        // The second one's growth to 10 MiB would make 20 MiB in all.
        assert!(limits.memory_growing(4 * MIB, 10 * MIB, None).is_err());
        assert!(limits.memory_hit);
        assert_eq!(limits.memory_total(), 14 * MIB, "a refused growth is not counted");
        assert!(limits.memory_growing(4 * MIB, 6 * MIB, None).unwrap());
        assert_eq!(limits.memory_total(), 16 * MIB);

        // Tables likewise, by elements.
        assert!(limits.table_growing(0, MAX_TABLE_ELEMENTS / 2, None).unwrap());
        assert!(!limits.table_growing(0, MAX_TABLE_ELEMENTS / 2 + 1, None).unwrap());
        assert!(limits.table_growing(0, MAX_TABLE_ELEMENTS / 2, None).unwrap());
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("hi", 10), "hi");
    }

    #[test]
    fn captured_output_is_bounded() {
        let out = CapturedOutput::default();
        out.append(&vec![b'a'; MAX_CAPTURED_OUTPUT + 10]);
        assert_eq!(out.text().len(), MAX_CAPTURED_OUTPUT);
        out.clear();
        out.append(b"thread panicked at x:\n  boom\n");
        assert_eq!(out.text(), "thread panicked at x: boom");
    }
}
