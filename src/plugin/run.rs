//! `hookd plugin run`: one plugin, one event, outside the daemon, with the
//! same engine, limits and checks as deliveries get.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Error, Input, PluginInfo, Plugins, Verdict};
use crate::config::{PluginConfig, PluginsConfig, SubscriptionName};
use crate::model::now_ms;

/// What one plugin run did.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// The plugin and how it was loaded.
    pub plugin: PluginInfo,
    /// The event's id (generated if the event had none).
    pub event_id: String,
    /// The body hookd would have sent without the plugin.
    pub original_body: Bytes,
    /// The checked verdict.
    pub verdict: Verdict,
    /// The body and headers that would be sent, or `None` if dropped.
    pub request: Option<(Bytes, Vec<(String, String)>)>,
    /// Time the call took (instantiation included: the first call of a
    /// plugin starts its instance).
    pub elapsed: Duration,
}

/// Runs the plugin at `path` once on the event in `event_json` (the JSON
/// producers send to `POST /v1/events`), with `config` as its
/// `[subscriptions.plugin.config]`, under `settings` (`[plugins]`).
///
/// The plugin is loaded as subscription `<file stem>`, so error messages
/// name it that way.
pub async fn run_once(
    settings: &PluginsConfig,
    path: &Path,
    event_json: &[u8],
    config: Vec<(String, String)>,
) -> Result<RunReport, Error> {
    let event = crate::ingest::parse_event(event_json, crate::ingest::DEFAULT_MAX_DEPTH)
        .map_err(|e| Error::Event { reason: e.to_string() })?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plugin".into());
    let plugins = Plugins::new(settings)?;
    let cfg = PluginConfig {
        path: path.to_owned(),
        config: config.into_iter().collect(),
        deadline: None,
        memory_limit: None,
        fresh_instance: None,
    };
    let plugin = plugins.load_async(&name, &cfg).await?;
    // The delivery ingest would make of it, and the input the dispatcher
    // would give the plugin on its first attempt (a subscription without
    // custom headers).
    let subscription =
        SubscriptionName::parse(&name).unwrap_or_else(|_| SubscriptionName::parse("plugin").expect("a valid name"));
    let delivery = crate::ingest::to_subscriptions(&event, "", std::iter::once(&subscription), 1, now_ms())
        .deliveries
        .remove(0);
    let input = Input::for_delivery(&delivery, &[]);
    let (body, headers) = (input.body.clone(), input.headers.clone());
    let started = Instant::now();
    let verdict = plugin.transform(input).await?;
    let elapsed = started.elapsed();
    let request = verdict.apply(&body, &headers);
    Ok(RunReport {
        plugin: plugin.info().clone(),
        event_id: event.id.to_string(),
        original_body: body,
        verdict,
        request,
        elapsed,
    })
}

impl RunReport {
    /// The report as text for a terminal.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let p = &self.plugin;
        let how = if p.from_cache { "loaded from cache" } else { "compiled" };
        let _ = writeln!(
            out,
            "plugin:   {} ({how} in {} ms, sha256 {})",
            p.path.display(),
            p.load_time.as_millis(),
            p.digest.get(..12).unwrap_or(&p.digest)
        );
        let _ = writeln!(out, "event:    {}", self.event_id);
        let _ = writeln!(out, "elapsed:  {}", micros(self.elapsed));
        match (&self.verdict, &self.request) {
            (Verdict::Deliver { body, .. }, Some((sent, headers))) => {
                let changed = if body.is_some() { "new body" } else { "body unchanged" };
                let _ = writeln!(out, "verdict:  deliver ({changed})");
                let _ = writeln!(out, "headers:");
                for (name, value) in headers {
                    let _ = writeln!(out, "  {name}: {value}");
                }
                let _ = writeln!(out, "body ({} bytes):", sent.len());
                let _ = writeln!(out, "{}", String::from_utf8_lossy(sent));
            }
            (Verdict::Drop { reason }, _) => {
                let _ = writeln!(out, "verdict:  drop: {reason}");
            }
            (Verdict::Deliver { .. }, None) => {
                let _ = writeln!(out, "verdict:  deliver (nothing to send)");
            }
        }
        out
    }
}

/// A duration as microseconds, or milliseconds when long.
fn micros(d: Duration) -> String {
    if d < Duration::from_millis(10) {
        format!("{} µs", d.as_micros())
    } else {
        format!("{} ms", d.as_millis())
    }
}
