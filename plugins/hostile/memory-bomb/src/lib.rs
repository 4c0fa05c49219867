//! Test plugin: allocates (and touches) memory until it cannot. hookd must
//! fail the call with a memory error at its cap.

use hookd_plugin_sdk::{export, Config, Error, Event, Plugin, Verdict};

struct MemoryBomb;

impl Plugin for MemoryBomb {
    fn transform(_event: Event, _config: &Config) -> Result<Verdict, Error> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![0xA5; 1 << 20]);
            std::hint::black_box(&hoard);
        }
    }
}

export!(MemoryBomb);
