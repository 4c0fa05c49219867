//! Telemetry: structured logs through `tracing`, and Prometheus
//! [`metrics`].
//!
//! Human-readable lines by default, one JSON object per line with
//! `--log-format json` (the event's fields flattened beside `timestamp`,
//! `level`, `target` and `message`). Every line about a delivery carries its
//! event id, delivery id and subscription as fields. `RUST_LOG` (or
//! `HOOKD_LOG`) selects what is shown, `info` by default.

pub mod metrics;

pub use metrics::Metrics;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber, writing to stderr, showing `default`
/// (`info`, say) unless `HOOKD_LOG` or `RUST_LOG` says otherwise. Safe to
/// call twice (the second call does nothing).
pub fn init(format: LogFormat, default: &str) {
    let filter = std::env::var("HOOKD_LOG")
        .ok()
        .map(EnvFilter::new)
        .unwrap_or_else(|| EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
