//! Test plugin: never returns. hookd must fail the call at its deadline.

use hookd_plugin_sdk::{export, Config, Error, Event, Plugin, Verdict};

struct EndlessLoop;

impl Plugin for EndlessLoop {
    fn transform(_event: Event, _config: &Config) -> Result<Verdict, Error> {
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

export!(EndlessLoop);
