//! Test plugin: panics on `test.panic` events; otherwise delivers with the
//! header `x-instance-calls` counting the calls this instance has served,
//! which shows whether hookd reused an instance or started a fresh one.

use std::sync::atomic::{AtomicU64, Ordering};

use hookd_plugin_sdk::{export, Config, Error, Event, Patch, Plugin, Verdict};

/// Calls served by this instance.
static CALLS: AtomicU64 = AtomicU64::new(0);

struct Panicky;

impl Plugin for Panicky {
    fn transform(event: Event, _config: &Config) -> Result<Verdict, Error> {
        let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        if event.event_type == "test.panic" {
            panic!("told to panic by event {}", event.id);
        }
        if event.event_type == "test.fail" {
            return Err(Error::new(format!("refusing event {}", event.id)));
        }
        hookd_plugin_sdk::log::info(&format!("call {calls}"));
        Ok(Patch::default()
            .set_header("x-instance-calls", calls.to_string())
            .into())
    }
}

export!(Panicky);
