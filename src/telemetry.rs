//! Telemetry: structured logs through `tracing`, and Prometheus
//! [`metrics`].
//!
//! Human-readable lines by default, one JSON object per line with
//! `--log-format json` (the event's fields flattened beside `timestamp`,
//! `level`, `target` and `message`). Every line about a delivery carries its
//! event id, delivery id and subscription as fields. `RUST_LOG` (or
//! `HOOKD_LOG`) selects what is shown, `info` by default.
//!
//! Text lines are coloured only when stderr is a terminal: a log written
//! to a file or a pipe carries no ANSI codes. Text that came from outside
//! (a plugin's log message, a stream entry echoed in a rejection) goes
//! through [`escape`] before it is logged, so it cannot end a line, forge
//! another or move a terminal's cursor.

pub mod metrics;

pub use metrics::Metrics;

use std::borrow::Cow;
use std::io::IsTerminal as _;

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
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// `text` safe to put in a log line: control characters (`\n`, `\r`, tab,
/// ESC, DEL, the C1 range) and the Unicode line and paragraph separators
/// are written as Rust escapes (`\n`, `\u{1b}`), a backslash as `\\`.
/// Borrowed when there is nothing to escape, which is the usual case.
pub fn escape(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() || c == '\\' || c == '\u{2028}' || c == '\u{2029}';
    if !text.contains(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escape_leaves_no_control_character() {
        let cases = [
            ("plain text, é ✓", "plain text, é ✓"),
            ("a\nb", "a\\nb"),
            ("a\r\nINFO forged", "a\\r\\nINFO forged"),
            ("\u{1b}[31mred", "\\u{1b}[31mred"),
            ("tab\there", "tab\\there"),
            ("nul\0 del\u{7f} c1\u{9b}", "nul\\u{0} del\\u{7f} c1\\u{9b}"),
            ("sep\u{2028}", "sep\\u{2028}"),
            ("back\\slash\\n", "back\\\\slash\\\\n"),
        ];
        for (text, want) in cases {
            assert_eq!(escape(text), want, "{text:?}");
            assert!(!escape(text).chars().any(char::is_control));
        }
    }
}
