//! Test plugin: delivers a body that shows what the plugin was given (id,
//! type, timestamp, headers, the original body as text), so a test can
//! compare what hookd's dispatcher and `hookd plugin run` give plugins.

use hookd_plugin_sdk::{export, Config, Error, Event, Plugin, Verdict};

struct Echo;

impl Plugin for Echo {
    fn transform(event: Event, _config: &Config) -> Result<Verdict, Error> {
        Verdict::json(&serde_json::json!({
            "id": event.id,
            "type": event.event_type,
            "timestamp": event.timestamp,
            "headers": event.headers,
            "body": String::from_utf8_lossy(&event.body),
        }))
    }
}

export!(Echo);
