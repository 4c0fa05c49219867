//! slack: reshapes an event into a Slack incoming-webhook message,
//! `{"text": ..., "blocks": [...]}`: a header with the event type, a section
//! listing the top-level `data` fields, and a context line with the event id
//! and time.
//!
//! Config:
//! - `title`: the header text, default the event type;
//! - `fields`: comma-separated `data` paths to show, default all top-level
//!   fields (at most 10, Slack's limit for section fields).

use hookd_plugin_sdk::{export, json, path, Config, Error, Event, Plugin, Value, Verdict};

/// Slack allows at most 10 fields in a section block.
const MAX_FIELDS: usize = 10;

struct Slack;

/// A JSON value as short text: strings bare, everything else as JSON.
fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Plugin for Slack {
    fn transform(event: Event, config: &Config) -> Result<Verdict, Error> {
        let body = event.json()?;
        let data = &body["data"];
        let title = config.get("title").unwrap_or(&event.event_type);
        let shown: Vec<(String, &Value)> = match config.get("fields") {
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|f| !f.is_empty())
                .filter_map(|f| path::get(data, f).map(|v| (f.to_owned(), v)))
                .collect(),
            None => data
                .as_object()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v)).collect())
                .unwrap_or_default(),
        };
        let summary = shown
            .iter()
            .map(|(k, v)| format!("{k}: {}", text_of(v)))
            .collect::<Vec<_>>()
            .join(", ");
        let fields: Vec<Value> = shown
            .iter()
            .take(MAX_FIELDS)
            .map(|(k, v)| json!({"type": "mrkdwn", "text": format!("*{k}*\n{}", text_of(v))}))
            .collect();
        let time = body["timestamp"].as_str().unwrap_or_default();
        let mut blocks = vec![json!({
            "type": "header",
            "text": {"type": "plain_text", "text": title},
        })];
        if !fields.is_empty() {
            blocks.push(json!({"type": "section", "fields": fields}));
        }
        blocks.push(json!({
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": format!("`{}` at {time}", event.id)}],
        }));
        let text = if summary.is_empty() {
            title.to_owned()
        } else {
            format!("{title}: {summary}")
        };
        Verdict::json(&json!({"text": text, "blocks": blocks}))
    }
}

export!(Slack);
