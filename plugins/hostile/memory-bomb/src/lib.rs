//! Test plugin: allocates (and touches) memory until it cannot. hookd must
//! fail the call with a memory error at its cap.
//!
//! With `keep_mib = "N"` it instead grows its memory by N MiB, keeps it (an
//! idle warm instance would hold it), and delivers with the header
//! `x-instance-calls` counting the calls this instance has served.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hookd_plugin_sdk::{export, Config, Error, Event, Patch, Plugin, Verdict};

/// Calls served by this instance.
static CALLS: AtomicU64 = AtomicU64::new(0);

/// What `keep_mib` asked to keep.
static KEPT: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

struct MemoryBomb;

impl Plugin for MemoryBomb {
    fn transform(_event: Event, config: &Config) -> Result<Verdict, Error> {
        let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(mib) = config.get("keep_mib") {
            let mib: usize = mib.parse().map_err(|_| Error::new("keep_mib: a number of MiB"))?;
            let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
            kept.extend((0..mib).map(|_| vec![0x5A; 1 << 20]));
            std::hint::black_box(&kept);
            return Ok(Patch::default()
                .set_header("x-instance-calls", calls.to_string())
                .into());
        }
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![0xA5; 1 << 20]);
            std::hint::black_box(&hoard);
        }
    }
}

export!(MemoryBomb);
