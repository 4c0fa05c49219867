//! Test plugin: returns a header name that is not a valid HTTP token (or,
//! with config `value = "true"`, a value with a newline). hookd must refuse
//! the patch.

use hookd_plugin_sdk::{export, Config, Error, Event, Patch, Plugin, Verdict};

struct Garbage;

impl Plugin for Garbage {
    fn transform(_event: Event, config: &Config) -> Result<Verdict, Error> {
        if config.get("value") == Some("true") {
            return Ok(Patch::default().set_header("x-ok", "line\r\nx-injected: 1").into());
        }
        Ok(Patch::default().set_header("bad header\n", "x").into())
    }
}

export!(Garbage);
