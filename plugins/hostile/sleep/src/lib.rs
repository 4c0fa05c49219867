//! Test plugin: blocks in WASI instead of running guest code: it sleeps for
//! an hour (`std::thread::sleep`, which on wasm32-wasip2 is
//! `monotonic-clock.subscribe-duration` then `poll`). Sleeping burns no
//! epoch ticks: hookd must still stop it at its deadline, in wall time.

use std::time::Duration;

use hookd_plugin_sdk::{export, Config, Error, Event, Plugin, Verdict};

struct Sleeper;

impl Plugin for Sleeper {
    fn transform(_event: Event, _config: &Config) -> Result<Verdict, Error> {
        std::thread::sleep(Duration::from_secs(3600));
        Ok(Verdict::unchanged())
    }
}

export!(Sleeper);
