//! redactor: masks or removes named fields of the event's `data` before it
//! leaves hookd.
//!
//! Config:
//! - `fields`: comma-separated dotted paths under `data`, such as
//!   `email,customer.phone,items.0.card` (required);
//! - `mode`: `mask` (default) replaces each value with `mask`, `remove`
//!   deletes the field;
//! - `mask`: the replacement text, default `"[redacted]"`.
//!
//! Paths that are absent are skipped. The event is delivered unchanged
//! (no new body) when nothing matched.

use hookd_plugin_sdk::{export, path, Config, Error, Event, Plugin, Value, Verdict};

struct Redactor;

enum Mode {
    Mask(String),
    Remove,
}

impl Plugin for Redactor {
    fn transform(event: Event, config: &Config) -> Result<Verdict, Error> {
        let fields: Vec<&str> = config
            .require("fields")?
            .split(',')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .collect();
        let mode = match config.get("mode").unwrap_or("mask") {
            "mask" => Mode::Mask(config.get("mask").unwrap_or("[redacted]").to_owned()),
            "remove" => Mode::Remove,
            other => {
                return Err(Error::new(format!(
                    "config `mode` = {other:?}: use \"mask\" or \"remove\""
                )))
            }
        };
        let mut body = event.json()?;
        let Some(data) = body.get_mut("data") else {
            return Err(Error::new("the event body has no `data`"));
        };
        let mut changed = 0;
        for field in fields {
            match &mode {
                Mode::Mask(mask) => {
                    if let Some(value) = path::get_mut(data, field) {
                        *value = Value::String(mask.clone());
                        changed += 1;
                    }
                }
                Mode::Remove => {
                    if path::remove(data, field).is_some() {
                        changed += 1;
                    }
                }
            }
        }
        if changed == 0 {
            return Ok(Verdict::unchanged());
        }
        Verdict::json(&body)
    }
}

export!(Redactor);
