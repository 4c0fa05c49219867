//! The operator CLI's side of the admin API: the checks of what the verbs
//! send, and pure functions from the API's JSON answers to the text
//! `hookd` prints. `main` parses the command line, calls a running hookd
//! through [`crate::api::client`] and prints what these return.
//!
//! Tables are sized to their content, times are shown as compact UTC
//! (`2026-11-23 10:04:05`), absent values as `-`. `--json` prints the
//! answer itself instead, so nothing here needs to show every field.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::api::event_types::EventTypeAnswer;
use crate::api::tenants::{KeyAnswer, KeyCreated, TenantAnswer};

/// Arguments a verb cannot send, or an answer it cannot read.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum Error {
    /// `--from` / `--to` is neither an RFC 3339 time nor a duration.
    #[error("{flag} `{value}`: give an RFC 3339 time like 2026-11-23T10:00:00Z, or how long ago like 30m, 1h, 2d")]
    Time {
        /// The flag at fault.
        flag: &'static str,
        /// What was given.
        value: String,
    },
    /// `replay` was given no target, or more than one.
    #[error("replay needs exactly one of DELIVERY_ID, --subscription NAME or --event ID ({given})")]
    ReplayTarget {
        /// What was given, in words.
        given: String,
    },
    /// A `replay` flag that does not go with the chosen target.
    #[error("{flag} goes only with {with}")]
    ReplayFlag {
        /// The flag at fault.
        flag: &'static str,
        /// The target it belongs to.
        with: &'static str,
    },
    /// A bulk replay `--state` other than dead or retrying.
    #[error("--state `{0}`: a bulk replay takes dead or retrying")]
    ReplayState(String),
    /// A flag's value that cannot be sent as given.
    #[error("{flag} `{value}`: {why}")]
    Arg {
        /// The flag at fault.
        flag: &'static str,
        /// What was given.
        value: String,
        /// Why not, and what to give instead.
        why: String,
    },
    /// Flags missing, or none given where one is needed.
    #[error("{0}")]
    Usage(String),
    /// hookd answered, but not in the shape this version expects.
    #[error("hookd's answer lacks `{field}`: is it a different version? ({answer})")]
    Answer {
        /// The field missing or of the wrong type.
        field: &'static str,
        /// The answer, for the operator to read.
        answer: String,
    },
}

// ---- arguments ----

/// A `--from` / `--to` value as RFC 3339 UTC: an RFC 3339 time as given,
/// or a duration (`90s`, `30m`, `1h`, `2d`, `1h 30m`) meaning that long
/// before `now`.
pub fn parse_when(flag: &'static str, text: &str, now: DateTime<Utc>) -> Result<String, Error> {
    let bad = || Error::Time {
        flag,
        value: text.to_owned(),
    };
    let at = match DateTime::parse_from_rfc3339(text.trim()) {
        Ok(t) => t.with_timezone(&Utc),
        Err(_) => {
            let ago = humantime::parse_duration(text.trim()).map_err(|_| bad())?;
            let ago = chrono::Duration::from_std(ago).map_err(|_| bad())?;
            now.checked_sub_signed(ago).ok_or_else(bad)?
        }
    };
    Ok(at.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// `text` percent-encoded for a URL query value or path segment: every
/// byte but the unreserved ones (`A-Z a-z 0-9 - . _ ~`) as `%XX`.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `?name=value&...` of the pairs with a value, encoded; empty if none.
pub fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(name, value)| value.map(|v| format!("{name}={}", encode(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// What `hookd deliveries` asks for: `GET /v1/deliveries` with these filters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeliveryQuery {
    /// Only this subscription's deliveries.
    pub subscription: Option<String>,
    /// Only deliveries in this state (the server checks the name).
    pub state: Option<String>,
    /// Created at or after, RFC 3339.
    pub from: Option<String>,
    /// Created before, RFC 3339.
    pub to: Option<String>,
    /// Page size.
    pub limit: Option<usize>,
}

impl DeliveryQuery {
    /// The query from the verb's flags, `--from` / `--to` resolved against `now`.
    pub fn new(
        subscription: Option<String>,
        state: Option<String>,
        from: Option<&str>,
        to: Option<&str>,
        limit: Option<usize>,
        now: DateTime<Utc>,
    ) -> Result<DeliveryQuery, Error> {
        Ok(DeliveryQuery {
            subscription,
            state,
            from: from.map(|t| parse_when("--from", t, now)).transpose()?,
            to: to.map(|t| parse_when("--to", t, now)).transpose()?,
            limit,
        })
    }

    /// The request path for the page after `cursor` (the first without one).
    pub fn path(&self, cursor: Option<&str>) -> String {
        let limit = self.limit.map(|n| n.to_string());
        let q = query(&[
            ("subscription", self.subscription.as_deref()),
            ("state", self.state.as_deref()),
            ("from", self.from.as_deref()),
            ("to", self.to.as_deref()),
            ("limit", limit.as_deref()),
            ("cursor", cursor),
        ]);
        format!("/v1/deliveries{q}")
    }
}

/// The flags of `hookd replay`, as parsed; [`ReplayArgs::check`] makes a
/// [`Replay`] of them.
#[derive(Clone, Debug, Default)]
pub struct ReplayArgs {
    /// One delivery, by id.
    pub id: Option<String>,
    /// Every matching delivery of this subscription.
    pub subscription: Option<String>,
    /// With `subscription`: dead or retrying.
    pub state: Option<String>,
    /// With `subscription`: created at or after (RFC 3339 or how long ago).
    pub from: Option<String>,
    /// With `subscription`: created before.
    pub to: Option<String>,
    /// With `subscription`: resume after this cursor.
    pub cursor: Option<String>,
    /// With `subscription`: deliveries per call.
    pub limit: Option<usize>,
    /// One event, fanned out again.
    pub event: Option<String>,
    /// With `event`: only to these subscriptions.
    pub to_subscriptions: Vec<String>,
    /// With `event`: an idempotency key, so a repeated replay is a no-op.
    pub key: Option<String>,
}

/// A checked `hookd replay`.
#[derive(Clone, Debug, PartialEq)]
pub enum Replay {
    /// `POST /v1/deliveries/{id}/replay`.
    Delivery {
        /// The delivery.
        id: String,
    },
    /// `POST /v1/subscriptions/{name}/replay`, page after page.
    Subscription(SubscriptionReplay),
    /// `POST /v1/events/{id}/replay`.
    Event {
        /// The event.
        id: String,
        /// Only to these subscriptions (all matching ones if empty).
        subscriptions: Vec<String>,
        /// Idempotency key.
        key: Option<String>,
    },
}

impl ReplayArgs {
    /// Checks that exactly one target is given and every flag goes with
    /// it; resolves `--from` / `--to` against `now`.
    pub fn check(self, now: DateTime<Utc>) -> Result<Replay, Error> {
        let mut given = Vec::new();
        if let Some(id) = &self.id {
            given.push(format!("DELIVERY_ID {id}"));
        }
        if let Some(s) = &self.subscription {
            given.push(format!("--subscription {s}"));
        }
        if let Some(e) = &self.event {
            given.push(format!("--event {e}"));
        }
        if given.len() != 1 {
            let given = if given.is_empty() {
                "none given".to_string()
            } else {
                format!("given: {}", given.join(", "))
            };
            return Err(Error::ReplayTarget { given });
        }
        let bulk_flags = [
            ("--state", self.state.is_some()),
            ("--from", self.from.is_some()),
            ("--to", self.to.is_some()),
            ("--cursor", self.cursor.is_some()),
            ("--limit", self.limit.is_some()),
        ];
        let event_flags = [
            ("--to-subscription", !self.to_subscriptions.is_empty()),
            ("--key", self.key.is_some()),
        ];
        let refuse = |flags: &[(&'static str, bool)], with: &'static str| match flags.iter().find(|(_, set)| *set) {
            Some((flag, _)) => Err(Error::ReplayFlag { flag, with }),
            None => Ok(()),
        };
        if let Some(id) = self.id {
            refuse(&bulk_flags, "--subscription")?;
            refuse(&event_flags, "--event")?;
            return Ok(Replay::Delivery { id });
        }
        if let Some(id) = self.event {
            refuse(&bulk_flags, "--subscription")?;
            return Ok(Replay::Event {
                id,
                subscriptions: self.to_subscriptions,
                key: self.key,
            });
        }
        refuse(&event_flags, "--event")?;
        let name = self.subscription.unwrap_or_default();
        if let Some(state) = &self.state {
            if state != "dead" && state != "retrying" {
                return Err(Error::ReplayState(state.clone()));
            }
        }
        Ok(Replay::Subscription(SubscriptionReplay {
            name,
            state: self.state,
            from: self.from.map(|t| parse_when("--from", &t, now)).transpose()?,
            to: self.to.map(|t| parse_when("--to", &t, now)).transpose()?,
            cursor: self.cursor,
            limit: self.limit,
        }))
    }
}

/// A bulk replay of one subscription's deliveries.
#[derive(Clone, Debug, PartialEq)]
pub struct SubscriptionReplay {
    /// The subscription.
    pub name: String,
    /// dead or retrying; the server's default when absent.
    pub state: Option<String>,
    /// Created at or after, RFC 3339.
    pub from: Option<String>,
    /// Created before, RFC 3339.
    pub to: Option<String>,
    /// Where to start: a `next_cursor` of an earlier run.
    pub cursor: Option<String>,
    /// Deliveries per call.
    pub limit: Option<usize>,
}

impl SubscriptionReplay {
    /// `/v1/subscriptions/{name}/replay`.
    pub fn path(&self) -> String {
        format!("/v1/subscriptions/{}/replay", encode(&self.name))
    }

    /// The body of the call starting at `cursor`, absent fields left out.
    pub fn body(&self, cursor: Option<&str>) -> Value {
        let mut body = serde_json::Map::new();
        let fields = [
            ("state", self.state.as_deref()),
            ("from", self.from.as_deref()),
            ("to", self.to.as_deref()),
            ("cursor", cursor),
        ];
        for (name, value) in fields {
            if let Some(value) = value {
                body.insert(name.into(), value.into());
            }
        }
        if let Some(limit) = self.limit {
            body.insert("limit".into(), limit.into());
        }
        Value::Object(body)
    }

    /// The command line that carries on from `cursor` (from the start
    /// without one), with `remote` (the `--server` / `--config` arguments as
    /// given) appended. Times are the resolved RFC 3339 ones, so a relative
    /// `--from 1h` does not move.
    pub fn resume_command(&self, cursor: Option<&str>, remote: &[String]) -> String {
        let mut words: Vec<String> = vec![
            "hookd".into(),
            "replay".into(),
            "--subscription".into(),
            self.name.clone(),
        ];
        let flags = [
            ("--state", self.state.clone()),
            ("--from", self.from.clone()),
            ("--to", self.to.clone()),
            ("--limit", self.limit.map(|n| n.to_string())),
            ("--cursor", cursor.map(str::to_owned)),
        ];
        for (flag, value) in flags {
            if let Some(value) = value {
                words.push(flag.into());
                words.push(value);
            }
        }
        words.extend(remote.iter().cloned());
        words.iter().map(|w| shell_word(w)).collect::<Vec<_>>().join(" ")
    }
}

/// `word` as a POSIX shell reads it back: bare when it is plain,
/// single-quoted otherwise.
pub fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The body of `POST /v1/events/{id}/replay`, absent fields left out.
pub fn event_replay_body(subscriptions: &[String], key: Option<&str>) -> Value {
    let mut body = serde_json::Map::new();
    if !subscriptions.is_empty() {
        body.insert("subscriptions".into(), json!(subscriptions));
    }
    if let Some(key) = key {
        body.insert("key".into(), key.into());
    }
    Value::Object(body)
}

// ---- what the answers look like ----

/// A table: a header line and rows, each column as wide as its widest
/// cell, two spaces apart, the last column unpadded.
#[derive(Debug)]
pub struct Table {
    /// Column titles.
    titles: Vec<&'static str>,
    /// Which columns are right-aligned (numbers).
    right: Vec<bool>,
    /// The cells, row by row.
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns; a title starting with `>` marks a
    /// right-aligned column (the `>` is not printed).
    pub fn new(columns: &[&'static str]) -> Table {
        Table {
            titles: columns.iter().map(|c| c.trim_start_matches('>')).collect(),
            right: columns.iter().map(|c| c.starts_with('>')).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (as many cells as columns).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as lines of text.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.titles.iter().map(|t| t.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let titles: Vec<String> = self.titles.iter().map(|t| t.to_string()).collect();
        for row in std::iter::once(&titles).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                let width = widths.get(i).copied().unwrap_or(0);
                let last = i + 1 == row.len();
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = width.saturating_sub(cell.chars().count());
                if self.right.get(i).copied().unwrap_or(false) {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    if !last {
                        line.push_str(&" ".repeat(pad));
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A value as a cell: `-` when absent or empty.
/// A subscription's plugin: a registered one by name with its config's
/// keys, a file by its path.
fn plugin_text(value: &Value) -> String {
    match value.get("name") {
        Some(name) => {
            let keys: Vec<String> = value["config_keys"]
                .as_array()
                .map(|k| k.iter().map(text).collect())
                .unwrap_or_default();
            if keys.is_empty() {
                text(name)
            } else {
                format!("{} (config: {})", text(name), keys.join(", "))
            }
        }
        None => text(value),
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        other => other.to_string(),
    }
}

/// An RFC 3339 time as compact UTC (`2026-11-23 10:04:05`); `-` when
/// absent; as given when it is not a time.
pub fn when(value: &Value) -> String {
    match value.as_str() {
        Some(s) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => t.with_timezone(&Utc).format("%Y-%m-%d %H:%M:%S").to_string(),
            Err(_) => s.to_owned(),
        },
        None => text(value),
    }
}

/// `text` on one line, cut to `max` characters with `…`.
fn clip(text: &str, max: usize) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        let cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

/// How long an attempt took: `12 ms`, `1.5 s`.
fn duration(value: &Value) -> String {
    match value.as_u64() {
        Some(ms) if ms < 1000 => format!("{ms} ms"),
        Some(ms) => format!("{:.1} s", ms as f64 / 1000.0),
        None => text(value),
    }
}

/// The last status and error of a delivery (or attempt) in one cell.
fn outcome(status: &Value, error: &Value, max: usize) -> String {
    let status = status.as_u64().map(|s| s.to_string());
    let error = error.as_str().filter(|e| !e.is_empty());
    let joined = match (status, error) {
        (Some(s), Some(e)) if e.contains(&s) => e.to_owned(),
        (Some(s), Some(e)) => format!("{s} {e}"),
        (Some(s), None) => s,
        (None, Some(e)) => e.to_owned(),
        (None, None) => "-".into(),
    };
    clip(&joined, max)
}

/// `n thing` or `n things`.
pub fn count(n: u64, thing: &str, things: &str) -> String {
    format!("{n} {}", if n == 1 { thing } else { things })
}

/// Widest error text in a table cell; `--json` and `attempts -v` show it all.
const ERROR_WIDTH: usize = 80;

/// `hookd subscriptions`: a table for the list answer
/// (`{"subscriptions": [...]}`), a key/value block for one subscription.
pub fn subscriptions(answer: &Value) -> String {
    match answer["subscriptions"].as_array() {
        Some(list) => subscription_table(list),
        None => subscription(answer),
    }
}

/// The subscriptions of a list answer as a table: id (a TOML
/// subscription's is its name), name, tenant (`-` for the operator's),
/// status and health.
pub fn subscription_table(list: &[Value]) -> String {
    let mut table = Table::new(&[
        "ID",
        "NAME",
        "TENANT",
        "STATUS",
        "SINCE",
        ">DELIVERED",
        ">RETRYING",
        ">DEAD",
        "LAST SUCCESS",
        "LAST FAILURE",
        "REASON",
    ]);
    for s in list {
        let id = if s["id"].is_null() { &s["name"] } else { &s["id"] };
        table.row(vec![
            text(id),
            text(&s["name"]),
            text(&s["tenant"]),
            text(&s["status"]),
            when(&s["since"]),
            text(&s["counts"]["delivered"]),
            text(&s["counts"]["retrying"]),
            text(&s["counts"]["dead"]),
            when(&s["last_success_at"]),
            when(&s["last_failure_at"]),
            clip(&text(&s["disabled_reason"]), ERROR_WIDTH),
        ]);
    }
    table.render()
}

/// The subscriptions of one page of `GET /v1/subscriptions`.
pub fn subscription_items(answer: &Value) -> Result<&Vec<Value>, Error> {
    answer["subscriptions"].as_array().ok_or_else(|| Error::Answer {
        field: "subscriptions",
        answer: clip(&answer.to_string(), 200),
    })
}

/// Lines `key  value`, the keys padded to the widest.
fn block(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs.iter().map(|(k, v)| format!("{k:<width$}  {v}\n")).collect()
}

/// One subscription (`GET /v1/subscriptions/{id}`) as a key/value block.
/// Header values are never shown (hookd answers their names only).
pub fn subscription(s: &Value) -> String {
    let status = match s["disabled_reason"].as_str() {
        Some(reason) if s["status"] != "active" => format!("{} ({reason})", text(&s["status"])),
        _ => text(&s["status"]),
    };
    let list = |value: &Value| match value.as_array() {
        Some(items) if items.is_empty() => "-".to_string(),
        Some(items) => items.iter().map(text).collect::<Vec<_>>().join(", "),
        None => text(value),
    };
    let mut pairs = vec![("name", text(&s["name"]))];
    if !s["id"].is_null() && s["id"] != s["name"] {
        pairs.insert(0, ("id", text(&s["id"])));
    }
    pairs.extend([
        ("tenant", text(&s["tenant"])),
        ("description", text(&s["description"])),
        ("status", status),
        ("since", when(&s["since"])),
        ("url", text(&s["url"])),
        ("events", list(&s["events"])),
        ("headers", list(&s["headers"])),
        ("rate limit", rate_limit(&s["rate_limit"])),
        ("max in flight", text(&s["max_in_flight"])),
        ("max retries", text(&s["max_retries"])),
        ("timeout", text(&s["timeout"])),
        ("created", when(&s["created_at"])),
        ("updated", when(&s["updated_at"])),
        ("delivered", text(&s["counts"]["delivered"])),
        ("retrying", text(&s["counts"]["retrying"])),
        ("dead", text(&s["counts"]["dead"])),
        ("filtered", text(&s["counts"]["filtered"])),
        ("consecutive failures", text(&s["consecutive_failures"])),
        ("failing since", when(&s["failing_since"])),
        ("last success", when(&s["last_success_at"])),
        ("last failure", when(&s["last_failure_at"])),
        ("plugin", plugin_text(&s["plugin"])),
    ]);
    block(&pairs)
}

/// A `rate_limit` answer (`{"per_second", "burst"}`) as `10/s, burst 20`.
fn rate_limit(value: &Value) -> String {
    match (&value["per_second"], &value["burst"]) {
        (Value::Number(rate), Value::Number(burst)) => format!("{rate}/s, burst {burst}"),
        (Value::Number(rate), _) => format!("{rate}/s"),
        _ => text(value),
    }
}

/// The deliveries of one page of `GET /v1/deliveries`.
pub fn delivery_items(answer: &Value) -> Result<&Vec<Value>, Error> {
    answer["deliveries"].as_array().ok_or_else(|| Error::Answer {
        field: "deliveries",
        answer: clip(&answer.to_string(), 200),
    })
}

/// The `next_cursor` of a page, if there are more.
pub fn next_cursor(answer: &Value) -> Option<&str> {
    answer["next_cursor"].as_str().filter(|c| !c.is_empty())
}

/// The hint printed (on stderr) when a page has a successor.
pub fn more_hint(cursor: &str) -> String {
    format!("more: --cursor {}", shell_word(cursor))
}

/// `hookd deliveries`: a table of delivery summaries.
pub fn deliveries(items: &[Value]) -> String {
    let mut table = Table::new(&[
        "DELIVERY",
        "EVENT",
        "TYPE",
        "SUBSCRIPTION",
        "STATE",
        ">ATTEMPTS",
        "CREATED",
        "LAST STATUS/ERROR",
    ]);
    for d in items {
        table.row(vec![
            text(&d["id"]),
            text(&d["event_id"]),
            text(&d["event_type"]),
            text(&d["subscription"]),
            text(&d["state"]),
            text(&d["attempts"]),
            when(&d["created_at"]),
            outcome(&d["last_status"], &d["last_error"], ERROR_WIDTH),
        ]);
    }
    table.render()
}

/// One line about a delivery: what, to whom, where it stands.
fn summary_line(d: &Value) -> String {
    let attempts = d["attempts"].as_u64().unwrap_or(0);
    let mut line = format!(
        "{}  {} {} -> {}: {}, {}, created {}",
        text(&d["id"]),
        text(&d["event_type"]),
        text(&d["event_id"]),
        text(&d["subscription"]),
        text(&d["state"]),
        count(attempts, "attempt", "attempts"),
        when(&d["created_at"]),
    );
    if !d["next_attempt_at"].is_null() {
        line.push_str(&format!(", next attempt {}", when(&d["next_attempt_at"])));
    }
    if let Some(note) = d["note"].as_str().filter(|n| !n.is_empty()) {
        line.push_str(&format!(" ({note})"));
    }
    line.push('\n');
    line
}

/// `[[name, value], ...]` as indented `name: value` lines.
fn headers(value: &Value) -> String {
    let lines: Vec<String> = value
        .as_array()
        .into_iter()
        .flatten()
        .map(|pair| format!("    {}: {}\n", text(&pair[0]), text(&pair[1])))
        .collect();
    if lines.is_empty() {
        "    (none)\n".into()
    } else {
        lines.concat()
    }
}

/// `hookd attempts`: the delivery's summary line, then a table of its
/// attempts; `verbose` adds each attempt's headers and response body.
pub fn attempts(answer: &Value, verbose: bool) -> String {
    let mut out = summary_line(&answer["delivery"]);
    let list = answer["attempts"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        out.push_str("no attempts yet\n");
        return out;
    }
    let mut table = Table::new(&[
        ">#",
        "STARTED",
        ">DURATION",
        "STATUS",
        "ERROR KIND",
        "ERROR",
        "NEXT ATTEMPT",
    ]);
    for a in &list {
        table.row(vec![
            text(&a["attempt"]),
            when(&a["started_at"]),
            duration(&a["duration_ms"]),
            text(&a["status"]),
            text(&a["error_kind"]),
            a["error"]
                .as_str()
                .map(|e| clip(e, ERROR_WIDTH))
                .unwrap_or_else(|| "-".into()),
            when(&a["next_attempt_at"]),
        ]);
    }
    out.push('\n');
    out.push_str(&table.render());
    if verbose {
        for a in &list {
            out.push_str(&format!(
                "\nattempt {} at {}: {} after {}\n",
                text(&a["attempt"]),
                when(&a["started_at"]),
                outcome(&a["status"], &a["error"], usize::MAX),
                duration(&a["duration_ms"]),
            ));
            out.push_str("  request headers:\n");
            out.push_str(&headers(&a["request_headers"]));
            out.push_str("  response headers:\n");
            out.push_str(&headers(&a["response_headers"]));
            match a["response_body"].as_str().filter(|b| !b.is_empty()) {
                Some(body) => {
                    out.push_str("  response body:\n");
                    for line in body.lines() {
                        out.push_str(&format!("    {line}\n"));
                    }
                }
                None => out.push_str("  response body: (empty)\n"),
            }
        }
    }
    out
}

/// `hookd event`: the event's deliveries, where each stands, and how
/// many attempts each took.
pub fn event(answer: &Value) -> String {
    let list = answer["deliveries"].as_array().cloned().unwrap_or_default();
    let event_type = list
        .first()
        .map(|d| text(&d["event_type"]))
        .unwrap_or_else(|| "-".into());
    let mut out = format!(
        "event {} ({event_type}): {}\n\n",
        text(&answer["event_id"]),
        count(list.len() as u64, "delivery", "deliveries")
    );
    let mut table = Table::new(&[
        "DELIVERY",
        "SUBSCRIPTION",
        "STATE",
        ">ATTEMPTS",
        "CREATED",
        "NEXT ATTEMPT",
        "LAST STATUS/ERROR",
    ]);
    for d in &list {
        // The answer replaces each delivery's attempt count by its attempts.
        let attempts = match &d["attempts"] {
            Value::Array(list) => list.len().to_string(),
            other => text(other),
        };
        table.row(vec![
            text(&d["id"]),
            text(&d["subscription"]),
            text(&d["state"]),
            attempts,
            when(&d["created_at"]),
            when(&d["next_attempt_at"]),
            outcome(&d["last_status"], &d["last_error"], ERROR_WIDTH),
        ]);
    }
    out.push_str(&table.render());
    out
}

/// `hookd dead`: a table of dead deliveries (`GET /v1/deliveries/dead`).
pub fn dead(answer: &Value) -> String {
    let mut table = Table::new(&[
        "DELIVERY",
        "SUBSCRIPTION",
        "EVENT TYPE",
        "CREATED",
        ">ATTEMPTS",
        "LAST ERROR",
    ]);
    for d in answer["deliveries"].as_array().into_iter().flatten() {
        table.row(vec![
            text(&d["id"]),
            text(&d["subscription"]),
            text(&d["event_type"]),
            when(&d["created_at"]),
            text(&d["attempts"]),
            d["last_error"]
                .as_str()
                .map(|e| clip(e, ERROR_WIDTH))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    table.render()
}

/// `hookd retry`: what the 202 answer says happened.
pub fn retried(answer: &Value) -> String {
    let id = text(&answer["id"]);
    match answer["action"].as_str() {
        Some("retried") => format!("{id}: next attempt due now\n"),
        Some("replayed") => format!("{id} was dead: replayed, due now, attempts reset\n"),
        Some("already_due") => format!("{id} is already due: nothing to do\n"),
        _ => format!("{id}: {}\n", text(&answer["action"])),
    }
}

/// `hookd replay DELIVERY_ID`: the 202 answer.
pub fn replayed(answer: &Value) -> String {
    format!("{} replayed: due now, attempts reset\n", text(&answer["id"]))
}

/// One answer of `POST /v1/subscriptions/{name}/replay`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplayPage {
    /// Deliveries put back in the queue.
    pub replayed: u64,
    /// Deliveries looked at but left alone.
    pub skipped: u64,
    /// Deliveries looked at.
    pub scanned: u64,
    /// Where the next call starts; `None` when done.
    pub next_cursor: Option<String>,
}

impl ReplayPage {
    /// Reads an answer `{"replayed", "skipped", "scanned", "next_cursor"}`.
    pub fn from_answer(answer: &Value) -> Result<ReplayPage, Error> {
        let number = |field: &'static str| {
            answer[field].as_u64().ok_or_else(|| Error::Answer {
                field,
                answer: clip(&answer.to_string(), 200),
            })
        };
        Ok(ReplayPage {
            replayed: number("replayed")?,
            skipped: number("skipped")?,
            scanned: number("scanned")?,
            next_cursor: next_cursor(answer).map(str::to_owned),
        })
    }

    /// Adds `page` to these totals.
    pub fn add(&mut self, page: &ReplayPage) {
        self.replayed += page.replayed;
        self.skipped += page.skipped;
        self.scanned += page.scanned;
        self.next_cursor = page.next_cursor.clone();
    }
}

/// The progress line (stderr) after page `n` (from 1), with the totals so far.
pub fn replay_progress(n: usize, page: &ReplayPage, totals: &ReplayPage) -> String {
    format!(
        "page {n}: replayed {}, skipped {}, scanned {} (so far: {} replayed of {} scanned)",
        page.replayed, page.skipped, page.scanned, totals.replayed, totals.scanned
    )
}

/// The closing line of a bulk replay of `subscription`.
pub fn replay_totals(subscription: &str, totals: &ReplayPage) -> String {
    format!(
        "{subscription}: {} replayed, {} skipped, {} scanned\n",
        count(totals.replayed, "delivery", "deliveries"),
        totals.skipped,
        totals.scanned
    )
}

/// `hookd replay --event`: the deliveries made, or that the key was used before.
pub fn event_replayed(event_id: &str, answer: &Value) -> String {
    if answer["duplicate"] == true {
        return format!("event {event_id}: this replay key was used before; nothing replayed\n");
    }
    let list = answer["deliveries"].as_array().cloned().unwrap_or_default();
    let mut out = format!(
        "event {event_id} replayed: {}\n",
        count(list.len() as u64, "new delivery", "new deliveries")
    );
    if !list.is_empty() {
        let mut table = Table::new(&["DELIVERY", "SUBSCRIPTION"]);
        for d in &list {
            table.row(vec![text(&d["id"]), text(&d["subscription"])]);
        }
        out.push_str(&table.render());
    }
    out
}

/// `hookd enable`: `crm enabled; 12 parked deliveries resumed`.
pub fn enabled(answer: &Value) -> String {
    let name = text(&answer["name"]);
    let resumed = count(
        answer["resumed"].as_u64().unwrap_or(0),
        "parked delivery",
        "parked deliveries",
    );
    if answer["changed"] == false {
        format!("{name} was already enabled; {resumed} resumed\n")
    } else {
        format!("{name} enabled; {resumed} resumed\n")
    }
}

/// `hookd disable`: that it is disabled, and how to undo it.
pub fn disabled(answer: &Value, reason: Option<&str>) -> String {
    let name = text(&answer["name"]);
    if answer["changed"] == false {
        return format!("{name} was already disabled\n");
    }
    let why = reason.map(|r| format!(" ({r})")).unwrap_or_default();
    format!("{name} disabled{why}; its deliveries are parked until `hookd enable {name}`\n")
}

// ---- tenants, keys, subscriptions and event types: arguments ----

/// A flag's value that cannot be sent as given.
fn bad(flag: &'static str, value: &str, why: impl Into<String>) -> Error {
    Error::Arg {
        flag,
        value: value.to_owned(),
        why: why.into(),
    }
}

/// A `--header NAME=VALUE` as its name and value.
pub fn parse_header(text: &str) -> Result<(String, String), Error> {
    match text.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => Ok((name.trim().to_owned(), value.to_owned())),
        _ => Err(bad("--header", text, "write NAME=VALUE, like --header x-team=billing")),
    }
}

/// A `--rate-limit PER_SECOND[/BURST]` (`10`, `0.5`, `10/20`) as hookd's
/// `{"per_second", "burst"}`; with `clear_burst` (an update) a missing
/// burst is sent as null, so the merge patch does not keep the old one.
pub fn parse_rate_limit(text: &str, clear_burst: bool) -> Result<Value, Error> {
    let how = "write PER_SECOND or PER_SECOND/BURST, like 10 or 0.5/2 or 10/20";
    let (rate, burst) = match text.split_once('/') {
        Some((rate, burst)) => (rate, Some(burst)),
        None => (text, None),
    };
    let per_second: f64 = rate
        .trim()
        .parse()
        .ok()
        .filter(|r: &f64| r.is_finite() && *r > 0.0)
        .ok_or_else(|| bad("--rate-limit", text, format!("{how}; the rate is a number above 0")))?;
    let mut limit = json!({ "per_second": per_second });
    match burst {
        Some(burst) => {
            let burst: u32 = burst.trim().parse().ok().filter(|b| *b >= 1).ok_or_else(|| {
                bad(
                    "--rate-limit",
                    text,
                    format!("{how}; the burst is a whole number from 1"),
                )
            })?;
            limit["burst"] = burst.into();
        }
        None if clear_burst => limit["burst"] = Value::Null,
        None => {}
    }
    Ok(limit)
}

/// A duration flag (`--timeout 5s`, `--grace 24h`), checked and sent as given.
pub fn parse_duration(flag: &'static str, text: &str) -> Result<String, Error> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) if !d.is_zero() => Ok(text.trim().to_owned()),
        _ => Err(bad(flag, text, "give a duration above zero, like 500ms, 5s, 24h")),
    }
}

/// A flag whose value is JSON.
pub fn parse_json(flag: &'static str, text: &str) -> Result<Value, Error> {
    serde_json::from_str(text).map_err(|e| bad(flag, text, format!("not JSON: {e}")))
}

/// A flag whose value is a JSON object.
pub fn parse_object(flag: &'static str, text: &str) -> Result<serde_json::Map<String, Value>, Error> {
    match parse_json(flag, text)? {
        Value::Object(map) => Ok(map),
        _ => Err(bad(flag, text, r#"give a JSON object, like {"region": "eu"}"#)),
    }
}

/// A `--schema FILE|JSON`: the text itself when it is JSON, else the JSON
/// in the file of that name, read by `read`.
pub fn parse_schema(text: &str, read: impl FnOnce(&str) -> std::io::Result<String>) -> Result<Value, Error> {
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        return Ok(value);
    }
    let contents = read(text).map_err(|e| bad("--schema", text, format!("neither JSON nor a file to read ({e})")))?;
    serde_json::from_str(&contents).map_err(|e| bad("--schema", text, format!("the file is not JSON: {e}")))
}

/// A tenant id given on the command line.
pub fn parse_tenant(flag: &'static str, text: &str) -> Result<crate::model::TenantId, Error> {
    crate::model::TenantId::parse(text).map_err(|why| bad(flag, text, why))
}

/// `GET /v1/subscriptions` of a tenant (all the caller may see without
/// one), one page after `cursor`.
pub fn subscriptions_path(tenant: Option<&str>, limit: Option<usize>, cursor: Option<&str>) -> String {
    let limit = limit.map(|n| n.to_string());
    let q = query(&[("tenant", tenant), ("limit", limit.as_deref()), ("cursor", cursor)]);
    format!("/v1/subscriptions{q}")
}

/// The flags of `hookd subscriptions create` and `update`, as parsed.
#[derive(Clone, Debug, Default)]
pub struct SubscriptionArgs {
    /// `--name`.
    pub name: Option<String>,
    /// `--url`.
    pub url: Option<String>,
    /// `--event` (repeatable): the event types, exact, `prefix.*` or `*`.
    pub events: Vec<String>,
    /// `--header NAME=VALUE` (repeatable).
    pub headers: Vec<String>,
    /// `--no-header NAME` (repeatable, update only): remove that header.
    pub no_headers: Vec<String>,
    /// `--description`.
    pub description: Option<String>,
    /// `--no-description` (update only).
    pub no_description: bool,
    /// `--tenant` (create only): the tenant it is for (an admin key must
    /// name one; a tenant key's own is the default).
    pub tenant: Option<String>,
    /// `--rate-limit PER_SECOND[/BURST]`.
    pub rate_limit: Option<String>,
    /// `--no-rate-limit` (update only).
    pub no_rate_limit: bool,
    /// `--max-in-flight`.
    pub max_in_flight: Option<usize>,
    /// `--max-retries`.
    pub max_retries: Option<u32>,
    /// `--timeout` of one attempt.
    pub timeout: Option<String>,
}

impl SubscriptionArgs {
    /// The fields every subscription flag sets, for creation (`update`
    /// false) or as a merge patch.
    fn fields(&self, update: bool) -> Result<serde_json::Map<String, Value>, Error> {
        let mut body = serde_json::Map::new();
        if let Some(name) = &self.name {
            body.insert("name".into(), name.as_str().into());
        }
        if let Some(url) = &self.url {
            body.insert("url".into(), url.as_str().into());
        }
        if !self.events.is_empty() {
            body.insert("events".into(), json!(self.events));
        }
        let mut headers = serde_json::Map::new();
        for header in &self.headers {
            let (name, value) = parse_header(header)?;
            headers.insert(name, value.into());
        }
        for name in &self.no_headers {
            if headers.contains_key(name.trim()) {
                return Err(bad("--no-header", name, "the same header is also given with --header"));
            }
            headers.insert(name.trim().to_owned(), Value::Null);
        }
        if !headers.is_empty() {
            body.insert("headers".into(), Value::Object(headers));
        }
        if let Some(description) = &self.description {
            body.insert("description".into(), description.as_str().into());
        } else if self.no_description {
            body.insert("description".into(), Value::Null);
        }
        if let Some(limit) = &self.rate_limit {
            body.insert("rate_limit".into(), parse_rate_limit(limit, update)?);
        } else if self.no_rate_limit {
            body.insert("rate_limit".into(), Value::Null);
        }
        if let Some(n) = self.max_in_flight {
            body.insert("max_in_flight".into(), n.into());
        }
        if let Some(n) = self.max_retries {
            body.insert("max_retries".into(), n.into());
        }
        if let Some(timeout) = &self.timeout {
            body.insert("timeout".into(), parse_duration("--timeout", timeout)?.into());
        }
        Ok(body)
    }

    /// The body of `POST /v1/subscriptions`: `--name`, `--url` and at least
    /// one `--event` are needed.
    pub fn create_body(&self) -> Result<Value, Error> {
        let missing: Vec<&str> = [
            ("--name", self.name.is_none()),
            ("--url", self.url.is_none()),
            ("--event", self.events.is_empty()),
        ]
        .iter()
        .filter(|(_, missing)| *missing)
        .map(|(flag, _)| *flag)
        .collect();
        if !missing.is_empty() {
            return Err(Error::Usage(format!(
                "a new subscription needs --name, --url and --event (missing: {})",
                missing.join(", ")
            )));
        }
        let mut body = self.fields(false)?;
        if let Some(tenant) = &self.tenant {
            body.insert("tenant".into(), parse_tenant("--tenant", tenant)?.as_str().into());
        }
        Ok(Value::Object(body))
    }

    /// The merge patch of `PATCH /v1/subscriptions/{id}`: only the fields
    /// given, null for those cleared; at least one.
    pub fn patch(&self) -> Result<Value, Error> {
        let body = self.fields(true)?;
        if body.is_empty() {
            return Err(Error::Usage(
                "nothing to change: give at least one of --name, --url, --event, --header, --no-header, \
                 --description, --no-description, --rate-limit, --no-rate-limit, --max-in-flight, \
                 --max-retries, --timeout"
                    .into(),
            ));
        }
        Ok(Value::Object(body))
    }
}

/// The body of `POST /v1/tenants`.
pub fn tenant_create_body(id: &str, name: &str, plan: Option<&str>, metadata: Option<&str>) -> Result<Value, Error> {
    let mut body = json!({ "id": parse_tenant("ID", id)?.as_str(), "name": name });
    if let Some(plan) = plan {
        body["plan"] = plan.into();
    }
    if let Some(metadata) = metadata {
        body["metadata"] = Value::Object(parse_object("--metadata", metadata)?);
    }
    Ok(body)
}

/// The merge patch of `PATCH /v1/tenants/{id}`: `--no-plan` sends a null
/// plan; `--metadata` is merged into the tenant's (a null value removes
/// that key). At least one field.
pub fn tenant_patch(
    name: Option<&str>,
    plan: Option<&str>,
    no_plan: bool,
    metadata: Option<&str>,
) -> Result<Value, Error> {
    let mut body = serde_json::Map::new();
    if let Some(name) = name {
        body.insert("name".into(), name.into());
    }
    if let Some(plan) = plan {
        body.insert("plan".into(), plan.into());
    } else if no_plan {
        body.insert("plan".into(), Value::Null);
    }
    if let Some(metadata) = metadata {
        body.insert("metadata".into(), Value::Object(parse_object("--metadata", metadata)?));
    }
    if body.is_empty() {
        return Err(Error::Usage(
            "nothing to change: give at least one of --name, --plan, --no-plan, --metadata".into(),
        ));
    }
    Ok(Value::Object(body))
}

/// Where the keys of `tenant` (of no tenant without one) are listed and made.
pub fn keys_path(tenant: Option<&str>) -> String {
    match tenant {
        Some(t) => format!("/v1/tenants/{}/keys", encode(t)),
        None => "/v1/keys".into(),
    }
}

/// `hookd keys create`: the path and body. A tenant's key is a `tenant`
/// (default) or `producer` key; a key of no tenant an `admin` (default)
/// or `producer` key.
pub fn key_request(tenant: Option<&str>, role: Option<&str>, label: Option<&str>) -> Result<(String, Value), Error> {
    if let Some(t) = tenant {
        parse_tenant("--tenant", t)?;
    }
    let role = match (tenant, role) {
        (Some(_), None) => "tenant",
        (None, None) => "admin",
        (Some(_), Some("admin")) => {
            return Err(bad(
                "--role",
                "admin",
                "an admin key belongs to no tenant: leave out --tenant",
            ))
        }
        (None, Some("tenant")) => return Err(bad("--role", "tenant", "a tenant key needs --tenant ID")),
        (_, Some(role @ ("admin" | "producer" | "tenant"))) => role,
        (_, Some(other)) => return Err(bad("--role", other, "give admin, producer or tenant")),
    };
    let mut body = json!({ "role": role });
    if let Some(label) = label {
        body["label"] = label.into();
    }
    Ok((keys_path(tenant), body))
}

/// The body of `POST /v1/subscriptions/{id}/rotate-secret`: the grace
/// and the new secret's kind (`hmac`, `ed25519`), if given.
pub fn rotate_body(grace: Option<&str>, kind: Option<&str>) -> Result<Value, Error> {
    let mut body = json!({});
    if let Some(grace) = grace {
        body["grace"] = parse_duration("--grace", grace)?.into();
    }
    if let Some(kind) = kind {
        body["kind"] = kind.into();
    }
    Ok(body)
}

/// The body of `POST /v1/subscriptions/{id}/test`: a type of the
/// catalogue with an example, which hookd sends as the event's data.
pub fn test_body(event_type: &str) -> Value {
    json!({ "type": event_type })
}

/// The body of `PUT /v1/event-types/{name}`: the whole event type, so an
/// absent description, schema or example is left out (none), and
/// `deprecated` is always sent.
pub fn event_type_body(
    description: Option<&str>,
    schema: Option<Value>,
    example: Option<&str>,
    deprecated: bool,
) -> Result<Value, Error> {
    let mut body = json!({ "deprecated": deprecated });
    if let Some(description) = description {
        body["description"] = description.into();
    }
    if let Some(schema) = schema {
        body["schema"] = schema;
    }
    if let Some(example) = example {
        body["example"] = parse_json("--example", example)?;
    }
    Ok(body)
}

// ---- tenants, keys, subscriptions and event types: answers ----

/// `answer` as `T`, or an error naming `field`.
fn typed<T: serde::de::DeserializeOwned>(answer: &Value, field: &'static str) -> Result<T, Error> {
    serde_json::from_value(answer.clone()).map_err(|_| Error::Answer {
        field,
        answer: clip(&answer.to_string(), 200),
    })
}

/// An optional time as compact UTC, `-` when absent.
fn when_opt(at: Option<DateTime<Utc>>) -> String {
    at.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

/// An optional text as a cell.
fn or_dash(value: Option<&str>) -> String {
    value.filter(|v| !v.is_empty()).unwrap_or("-").to_owned()
}

/// The tenants of `GET /v1/tenants`.
#[derive(serde::Deserialize)]
struct TenantList {
    tenants: Vec<TenantAnswer>,
}

/// The keys of `GET /v1/keys` or `GET /v1/tenants/{id}/keys`.
#[derive(serde::Deserialize)]
struct KeyList {
    keys: Vec<KeyAnswer>,
}

/// `hookd tenants list`: a table.
pub fn tenants(answer: &Value) -> Result<String, Error> {
    let list: TenantList = typed(answer, "tenants")?;
    let mut table = Table::new(&["ID", "NAME", "PLAN", ">SUBSCRIPTIONS", "SOURCE", "CREATED", "UPDATED"]);
    for t in &list.tenants {
        table.row(vec![
            t.id.to_string(),
            t.name.clone(),
            or_dash(t.plan.as_deref()),
            t.subscriptions.to_string(),
            t.source.clone(),
            when_opt(t.created_at),
            when_opt(t.updated_at),
        ]);
    }
    Ok(table.render())
}

/// `hookd tenants show`: a key/value block.
pub fn tenant(answer: &Value) -> Result<String, Error> {
    let t: TenantAnswer = typed(answer, "id")?;
    let metadata = if t.metadata.is_empty() {
        "-".to_string()
    } else {
        Value::Object(t.metadata.clone()).to_string()
    };
    Ok(block(&[
        ("id", t.id.to_string()),
        ("name", t.name.clone()),
        ("plan", or_dash(t.plan.as_deref())),
        ("metadata", metadata),
        ("source", t.source.clone()),
        ("subscriptions", t.subscriptions.to_string()),
        ("created", when_opt(t.created_at)),
        ("updated", when_opt(t.updated_at)),
    ]))
}

/// `hookd tenants create` / `update`: one line.
pub fn tenant_saved(answer: &Value, verb: &str) -> Result<String, Error> {
    let t: TenantAnswer = typed(answer, "id")?;
    let plan = t.plan.as_deref().map(|p| format!(", plan {p}")).unwrap_or_default();
    Ok(format!("tenant {} ({}{plan}) {verb}\n", t.id, t.name))
}

/// `hookd tenants delete`: what went with it.
pub fn tenant_deleted(answer: &Value) -> String {
    let subs: Vec<String> = answer["subscriptions_deleted"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    let gone = match subs.len() {
        0 => "no subscriptions".to_string(),
        n => format!(
            "{}: {}",
            count(n as u64, "subscription", "subscriptions"),
            subs.join(", ")
        ),
    };
    format!(
        "tenant {} deleted with {gone} (their pending deliveries cancelled) and its keys revoked\n",
        text(&answer["id"])
    )
}

/// `hookd keys list`: a table; never the keys themselves.
pub fn keys(answer: &Value) -> Result<String, Error> {
    let list: KeyList = typed(answer, "keys")?;
    let mut table = Table::new(&["ID", "ROLE", "TENANT", "LABEL", "CREATED", "LAST USED"]);
    for k in &list.keys {
        table.row(vec![
            k.id.clone(),
            k.role.as_str().to_owned(),
            k.tenant.as_ref().map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
            or_dash(k.label.as_deref()),
            when_opt(k.created_at),
            when_opt(k.last_used_at),
        ]);
    }
    Ok(table.render())
}

/// `hookd keys create`: the key, set apart, and that it is shown this once.
pub fn key_created(answer: &Value) -> Result<String, Error> {
    let k: KeyCreated = typed(answer, "key")?;
    let whose = match &k.tenant {
        Some(t) => format!("{} key of tenant {t}", k.role.as_str()),
        None => format!("{} key", k.role.as_str()),
    };
    Ok(format!(
        "{} made ({whose}):\n\n    {}\n\nCopy it now: it will not be shown again (hookd keeps only its hash).\n\
         Revoke it with `hookd keys revoke {}{}`.\n",
        k.id,
        k.key,
        k.id,
        k.tenant.as_ref().map(|t| format!(" --tenant {t}")).unwrap_or_default(),
    ))
}

/// `hookd keys revoke`: one line.
pub fn key_revoked(answer: &Value) -> String {
    format!(
        "key {} revoked: it stops working within a second\n",
        text(&answer["id"])
    )
}

/// `hookd subscriptions create`: its id and, set apart, its secret.
pub fn subscription_created(answer: &Value) -> String {
    let id = text(&answer["id"]);
    let tenant = answer["tenant"]
        .as_str()
        .map(|t| format!(" for tenant {t}"))
        .unwrap_or_default();
    let public = public_keys(answer);
    if public.is_empty() {
        return format!(
            "subscription {id} ({}) made{tenant}\n\nsigning secret:\n\n    {}\n\n\
             Verify its webhooks with this secret; `hookd subscriptions secret {id}` shows it again.\n",
            text(&answer["name"]),
            text(&answer["secret"]),
        );
    }
    format!(
        "subscription {id} ({}) made{tenant}\n\nEd25519 secret key (keep it; hookd signs with it):\n\n    {}\n\n\
         public key (give it to the receiver, which verifies v1a signatures with it):\n\n    {}\n\n\
         `hookd subscriptions secret {id}` shows both again.\n",
        text(&answer["name"]),
        text(&answer["secret"]),
        public.join("\n    "),
    )
}

/// The `whpk_…` keys of an answer's `public_keys`.
fn public_keys(answer: &Value) -> Vec<String> {
    answer["public_keys"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect()
}

/// `hookd subscriptions update`: which fields changed.
pub fn subscription_updated(answer: &Value, patch: &Value) -> String {
    let fields: Vec<&str> = patch
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, _)| k.as_str())
        .collect();
    format!(
        "subscription {} ({}) updated: {}\n",
        text(&answer["id"]),
        text(&answer["name"]),
        fields.join(", ")
    )
}

/// `hookd subscriptions delete`: one line.
pub fn subscription_deleted(answer: &Value) -> String {
    format!(
        "subscription {} deleted; its pending deliveries are cancelled\n",
        text(&answer["id"])
    )
}

/// `hookd subscriptions secret`: the secret signing now, and any other
/// still valid (during a rotation).
pub fn secret(answer: &Value) -> String {
    let current = text(&answer["secret"]);
    let mut out = format!("{current}\n");
    let others: Vec<String> = answer["secrets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .filter(|s| *s != current)
        .collect();
    if !others.is_empty() {
        out.push_str(&format!("also signing until their grace ends: {}\n", others.join(", ")));
    }
    let public = public_keys(answer);
    if !public.is_empty() {
        out.push_str(&format!(
            "public keys (receivers verify v1a signatures with these): {}\n",
            public.join(", ")
        ));
    }
    out
}

/// `hookd subscriptions rotate-secret`: the new secret, set apart, and
/// until when the previous ones keep signing (`previous_expire_at`; null
/// with a zero grace).
pub fn secret_rotated(answer: &Value) -> String {
    let old = match &answer["previous_expire_at"] {
        Value::Null => "the previous secret stopped signing at once".to_string(),
        at => format!("the previous secret keeps signing too until {} UTC", when(at)),
    };
    match answer["public_key"].as_str() {
        None => format!(
            "subscription {}: new signing secret:\n\n    {}\n\n{old}; give the new one to the receiver now.\n",
            text(&answer["id"]),
            text(&answer["secret"])
        ),
        Some(public) => format!(
            "subscription {}: new Ed25519 secret key:\n\n    {}\n\nits public key:\n\n    {public}\n\n\
             {old}; give the new public key to the receiver now.\n",
            text(&answer["id"]),
            text(&answer["secret"])
        ),
    }
}

/// `hookd subscriptions test`: what was sent and how to follow it.
pub fn test_sent(id: &str, answer: &Value) -> String {
    let delivery = text(&answer["delivery_id"]);
    format!(
        "test event {} sent to {id}: delivery {delivery} (follow it with `hookd attempts {delivery}`)\n",
        text(&answer["event_id"]),
    )
}

/// The types of `GET /v1/event-types`.
#[derive(serde::Deserialize)]
struct EventTypeList {
    event_types: Vec<EventTypeAnswer>,
}

/// `hookd event-types list`: a table.
pub fn event_types(answer: &Value) -> Result<String, Error> {
    let list: EventTypeList = typed(answer, "event_types")?;
    let mut table = Table::new(&["NAME", "DEPRECATED", "SCHEMA", "EXAMPLE", "SOURCE", "DESCRIPTION"]);
    let yes = |given: bool| if given { "yes" } else { "-" }.to_string();
    for t in &list.event_types {
        table.row(vec![
            t.name.clone(),
            yes(t.deprecated),
            yes(t.schema.is_some()),
            yes(t.example.is_some()),
            t.source.clone(),
            clip(&or_dash(Some(&t.description)), ERROR_WIDTH),
        ]);
    }
    Ok(table.render())
}

/// `hookd event-types put`: one line.
pub fn event_type_saved(answer: &Value) -> Result<String, Error> {
    let t: EventTypeAnswer = typed(answer, "name")?;
    let deprecated = if t.deprecated { " (deprecated)" } else { "" };
    let has = |given: bool, what: &str| if given { format!(", {what}") } else { String::new() };
    Ok(format!(
        "event type {} saved{deprecated}{}{}\n",
        t.name,
        has(t.schema.is_some(), "with a schema"),
        has(t.example.is_some(), "with an example"),
    ))
}

/// `hookd event-types delete`: one line.
pub fn event_type_deleted(name: &str) -> String {
    format!("event type {name} deleted\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn times_are_rfc3339_or_how_long_ago() {
        for (given, expected) in [
            ("2026-11-23T09:00:00Z", "2026-11-23T09:00:00.000Z"),
            ("2026-11-23T11:00:00+02:00", "2026-11-23T09:00:00.000Z"),
            ("1h", "2026-11-23T09:00:00.000Z"),
            ("30m", "2026-11-23T09:30:00.000Z"),
            ("2d", "2026-11-21T10:00:00.000Z"),
            ("90s", "2026-11-23T09:58:30.000Z"),
            ("1h 30m", "2026-11-23T08:30:00.000Z"),
        ] {
            assert_eq!(parse_when("--from", given, now()).as_deref(), Ok(expected), "{given}");
        }
        for bad in ["yesterday", "", "1x", "2026-13-01T00:00:00Z", "-1h"] {
            let err = parse_when("--to", bad, now()).unwrap_err();
            assert!(err.to_string().starts_with(&format!("--to `{bad}`")), "{err}");
        }
    }

    #[test]
    fn query_values_are_encoded_and_absent_ones_left_out() {
        assert_eq!(encode("a b+c/d?é"), "a%20b%2Bc%2Fd%3F%C3%A9");
        assert_eq!(query(&[("a", None)]), "");
        let q = DeliveryQuery::new(
            Some("crm".into()),
            Some("dead".into()),
            Some("2026-11-23T11:00:00+01:00"),
            None,
            Some(2),
            now(),
        )
        .unwrap();
        assert_eq!(
            q.path(Some("c+1/x")),
            "/v1/deliveries?subscription=crm&state=dead&from=2026-11-23T10%3A00%3A00.000Z&limit=2&cursor=c%2B1%2Fx"
        );
        assert_eq!(DeliveryQuery::default().path(None), "/v1/deliveries");
        assert!(DeliveryQuery::new(None, None, None, Some("soon"), None, now()).is_err());
    }

    #[test]
    fn replay_takes_exactly_one_target() {
        let none = ReplayArgs::default().check(now()).unwrap_err();
        assert_eq!(
            none.to_string(),
            "replay needs exactly one of DELIVERY_ID, --subscription NAME or --event ID (none given)"
        );
        let two = ReplayArgs {
            id: Some("dlv_1".into()),
            event: Some("evt_1".into()),
            ..Default::default()
        };
        let err = two.check(now()).unwrap_err().to_string();
        assert!(err.ends_with("(given: DELIVERY_ID dlv_1, --event evt_1)"), "{err}");

        let one = ReplayArgs {
            id: Some("dlv_1".into()),
            ..Default::default()
        };
        assert_eq!(one.check(now()), Ok(Replay::Delivery { id: "dlv_1".into() }));
    }

    #[test]
    fn replay_flags_must_go_with_their_target() {
        let cases = [
            (
                ReplayArgs {
                    id: Some("dlv_1".into()),
                    state: Some("dead".into()),
                    ..Default::default()
                },
                "--state goes only with --subscription",
            ),
            (
                ReplayArgs {
                    id: Some("dlv_1".into()),
                    key: Some("k".into()),
                    ..Default::default()
                },
                "--key goes only with --event",
            ),
            (
                ReplayArgs {
                    event: Some("evt_1".into()),
                    cursor: Some("c".into()),
                    ..Default::default()
                },
                "--cursor goes only with --subscription",
            ),
            (
                ReplayArgs {
                    subscription: Some("crm".into()),
                    to_subscriptions: vec!["crm".into()],
                    ..Default::default()
                },
                "--to-subscription goes only with --event",
            ),
            (
                ReplayArgs {
                    subscription: Some("crm".into()),
                    state: Some("delivered".into()),
                    ..Default::default()
                },
                "--state `delivered`: a bulk replay takes dead or retrying",
            ),
            (
                ReplayArgs {
                    subscription: Some("crm".into()),
                    from: Some("last week".into()),
                    ..Default::default()
                },
                "--from `last week`: give an RFC 3339 time like 2026-11-23T10:00:00Z, or how long ago like 30m, 1h, 2d",
            ),
        ];
        for (args, expected) in cases {
            assert_eq!(args.check(now()).unwrap_err().to_string(), expected);
        }
    }

    #[test]
    fn bulk_replay_sends_only_what_was_given_and_resumes_exactly() {
        let args = ReplayArgs {
            subscription: Some("crm".into()),
            state: Some("dead".into()),
            from: Some("1h".into()),
            ..Default::default()
        };
        let Ok(Replay::Subscription(bulk)) = args.check(now()) else {
            panic!("a bulk replay")
        };
        assert_eq!(bulk.path(), "/v1/subscriptions/crm/replay");
        assert_eq!(
            bulk.body(None),
            json!({"state": "dead", "from": "2026-11-23T09:00:00.000Z"})
        );
        assert_eq!(
            bulk.body(Some("c2")),
            json!({"state": "dead", "from": "2026-11-23T09:00:00.000Z", "cursor": "c2"})
        );
        let remote = ["--config".to_string(), "/etc/hookd dir/hookd.toml".to_string()];
        assert_eq!(
            bulk.resume_command(Some("abc="), &remote),
            "hookd replay --subscription crm --state dead --from 2026-11-23T09:00:00.000Z --cursor abc= \
             --config '/etc/hookd dir/hookd.toml'"
        );

        assert_eq!(
            bulk.resume_command(None, &[]),
            "hookd replay --subscription crm --state dead --from 2026-11-23T09:00:00.000Z"
        );

        let event = ReplayArgs {
            event: Some("evt_1".into()),
            to_subscriptions: vec!["crm".into(), "billing".into()],
            ..Default::default()
        };
        let Ok(Replay::Event { subscriptions, key, .. }) = event.check(now()) else {
            panic!("an event replay")
        };
        assert_eq!(
            event_replay_body(&subscriptions, key.as_deref()),
            json!({"subscriptions": ["crm", "billing"]})
        );
        assert_eq!(event_replay_body(&[], Some("k1")), json!({"key": "k1"}));
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn replay_pages_add_up() {
        let answers = [
            json!({"replayed": 2, "skipped": 1, "scanned": 3, "next_cursor": "c1"}),
            json!({"replayed": 1, "skipped": 0, "scanned": 1, "next_cursor": null}),
        ];
        let mut totals = ReplayPage::default();
        let mut lines = Vec::new();
        for (n, answer) in answers.iter().enumerate() {
            let page = ReplayPage::from_answer(answer).unwrap();
            totals.add(&page);
            lines.push(replay_progress(n + 1, &page, &totals));
        }
        assert_eq!(
            lines[0],
            "page 1: replayed 2, skipped 1, scanned 3 (so far: 2 replayed of 3 scanned)"
        );
        assert_eq!(totals.next_cursor, None);
        assert_eq!(
            replay_totals("crm", &totals),
            "crm: 3 deliveries replayed, 1 skipped, 4 scanned\n"
        );
        let err = ReplayPage::from_answer(&json!({"replayed": 1})).unwrap_err();
        assert!(err.to_string().starts_with("hookd's answer lacks `skipped`"), "{err}");
    }

    #[test]
    fn tables_fit_their_content() {
        let mut table = Table::new(&["NAME", ">N", "NOTE"]);
        table.row(vec!["a".into(), "1234".into(), "x".into()]);
        table.row(vec!["longer".into(), "5".into(), "-".into()]);
        assert_eq!(
            table.render(),
            "NAME       N  NOTE\n\
             a       1234  x\n\
             longer     5  -\n"
        );
    }

    #[test]
    fn cells_show_compact_times_and_dashes() {
        assert_eq!(when(&json!("2026-11-23T10:04:05.123Z")), "2026-11-23 10:04:05");
        assert_eq!(when(&json!("2026-11-23T12:04:05+02:00")), "2026-11-23 10:04:05");
        assert_eq!(when(&Value::Null), "-");
        assert_eq!(text(&json!("")), "-");
        assert_eq!(
            outcome(&json!(503), &json!("endpoint answered 503 Service Unavailable"), 80),
            "endpoint answered 503 Service Unavailable"
        );
        assert_eq!(outcome(&json!(204), &Value::Null, 80), "204");
        assert_eq!(
            outcome(&Value::Null, &json!("connect: refused"), 80),
            "connect: refused"
        );
        assert_eq!(outcome(&Value::Null, &Value::Null, 80), "-");
        assert_eq!(clip("a\nb  c", 80), "a b c");
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(duration(&json!(12)), "12 ms");
        assert_eq!(duration(&json!(1500)), "1.5 s");
    }

    #[test]
    fn subscriptions_render_as_a_table_or_a_block() {
        let crm = json!({
            "name": "crm", "url": "https://crm.example.com/webhooks", "events": ["coupon.*", "stamp.rewarded"],
            "status": "disabled", "disabled_reason": "3 consecutive failed attempts",
            "since": "2026-11-23T10:04:05.123456Z", "consecutive_failures": 3, "failing_since": null,
            "last_success_at": "2026-11-23T09:00:00Z", "last_failure_at": null,
            "counts": {"delivered": 1840, "retrying": 3, "dead": 12, "filtered": 95}, "plugin": null
        });
        let billing = json!({
            "name": "billing", "status": "active", "disabled_reason": null, "since": "2026-11-20T08:00:00Z",
            "counts": {"delivered": 7, "retrying": 0, "dead": 0, "filtered": 0},
            "last_success_at": null, "last_failure_at": null
        });
        let mut acme = billing.clone();
        acme["id"] = json!("sub_7f3a");
        acme["name"] = json!("orders");
        acme["tenant"] = json!("acme");
        let table = subscriptions(&json!({"subscriptions": [crm, billing, acme]}));
        assert_eq!(
            table,
            "ID        NAME     TENANT  STATUS    SINCE                DELIVERED  RETRYING  DEAD  LAST SUCCESS         LAST FAILURE  REASON\n\
             crm       crm      -       disabled  2026-11-23 10:04:05       1840         3    12  2026-11-23 09:00:00  -             3 consecutive failed attempts\n\
             billing   billing  -       active    2026-11-20 08:00:00          7         0     0  -                    -             -\n\
             sub_7f3a  orders   acme    active    2026-11-20 08:00:00          7         0     0  -                    -             -\n"
        );
        let one = subscriptions(&json!({
            "id": "sub_7f3a", "name": "orders", "tenant": "acme", "description": "order events",
            "url": "https://acme.example/hooks", "events": ["order.*"], "headers": ["x-team"],
            "rate_limit": {"per_second": 10.0, "burst": 20}, "max_in_flight": 4, "max_retries": null,
            "timeout": "5s", "created_at": "2026-11-20T08:00:00Z", "status": "active"
        }));
        for line in [
            "id                    sub_7f3a\n",
            "name                  orders\n",
            "tenant                acme\n",
            "headers               x-team\n",
            "rate limit            10.0/s, burst 20\n",
            "max retries           -\n",
            "timeout               5s\n",
            "created               2026-11-20 08:00:00\n",
        ] {
            assert!(one.contains(line), "{line:?} in\n{one}");
        }
        let one = subscriptions(&crm);
        assert!(
            one.contains("status                disabled (3 consecutive failed attempts)\n"),
            "{one}"
        );
        assert!(
            one.contains("events                coupon.*, stamp.rewarded\n"),
            "{one}"
        );
        assert!(one.contains("failing since         -\n"), "{one}");
    }

    fn delivery(id: &str, state: &str, status: Value, error: Value) -> Value {
        json!({
            "id": id, "event_id": "evt_1", "event_type": "coupon.redeemed", "subscription": "crm",
            "state": state, "attempts": 2, "created_at": "2026-11-23T10:04:05.000Z",
            "updated_at": "2026-11-23T10:04:06.000Z", "last_status": status, "last_error": error,
            "next_attempt_at": null, "note": null
        })
    }

    #[test]
    fn deliveries_and_events_render_as_tables() {
        let items = vec![
            delivery("dlv_a", "delivered", json!(204), Value::Null),
            delivery(
                "dlv_b",
                "retrying",
                json!(503),
                json!("endpoint answered 503 Service Unavailable"),
            ),
        ];
        let table = deliveries(&items);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "DELIVERY  EVENT  TYPE             SUBSCRIPTION  STATE      ATTEMPTS  CREATED              LAST STATUS/ERROR");
        assert_eq!(
            lines[1],
            "dlv_a     evt_1  coupon.redeemed  crm           delivered         2  2026-11-23 10:04:05  204"
        );
        assert!(
            lines[2].ends_with("retrying          2  2026-11-23 10:04:05  endpoint answered 503 Service Unavailable")
        );
        assert_eq!(next_cursor(&json!({"next_cursor": null})), None);
        assert_eq!(next_cursor(&json!({"next_cursor": "c1"})), Some("c1"));
        assert_eq!(more_hint("c1"), "more: --cursor c1");
        assert!(delivery_items(&json!({"oops": 1})).is_err());

        let mut with_attempts = items.clone();
        with_attempts[0]["attempts"] = json!([{"attempt": 1}, {"attempt": 2}]);
        let shown = event(&json!({"event_id": "evt_1", "deliveries": with_attempts}));
        assert!(
            shown.starts_with("event evt_1 (coupon.redeemed): 2 deliveries\n\nDELIVERY  SUBSCRIPTION"),
            "{shown}"
        );
        assert!(
            shown.contains("dlv_a     crm           delivered         2  2026-11-23 10:04:05  -             204\n"),
            "{shown}"
        );
    }

    #[test]
    fn attempts_render_with_and_without_detail() {
        let answer = json!({
            "delivery": delivery("dlv_b", "delivered", json!(204), Value::Null),
            "attempts": [
                {"attempt": 1, "started_at": "2026-11-23T10:04:05.000Z", "duration_ms": 12,
                 "request_headers": [["content-type", "application/json"], ["webhook-signature", "[redacted]"]],
                 "status": 503, "response_headers": [["retry-after", "1"]], "response_body": "busy\ntry later",
                 "error_kind": "status", "error": "endpoint answered 503 Service Unavailable",
                 "next_attempt_at": "2026-11-23T10:04:06.000Z"},
                {"attempt": 2, "started_at": "2026-11-23T10:04:06.000Z", "duration_ms": 1500,
                 "request_headers": [], "status": 204, "response_headers": [], "response_body": "",
                 "error_kind": null, "error": null, "next_attempt_at": null}
            ]
        });
        let short = attempts(&answer, false);
        let lines: Vec<&str> = short.lines().collect();
        assert_eq!(
            lines[0],
            "dlv_b  coupon.redeemed evt_1 -> crm: delivered, 2 attempts, created 2026-11-23 10:04:05"
        );
        assert_eq!(lines[2], "#  STARTED              DURATION  STATUS  ERROR KIND  ERROR                                      NEXT ATTEMPT");
        assert_eq!(lines[3], "1  2026-11-23 10:04:05     12 ms  503     status      endpoint answered 503 Service Unavailable  2026-11-23 10:04:06");
        assert_eq!(
            lines[4],
            "2  2026-11-23 10:04:06     1.5 s  204     -           -                                          -"
        );
        assert!(!short.contains("request headers"));

        let long = attempts(&answer, true);
        assert!(long.contains("\nattempt 1 at 2026-11-23 10:04:05: endpoint answered 503 Service Unavailable after 12 ms\n  request headers:\n    content-type: application/json\n    webhook-signature: [redacted]\n  response headers:\n    retry-after: 1\n  response body:\n    busy\n    try later\n"), "{long}");
        assert!(
            long.contains("\nattempt 2 at 2026-11-23 10:04:06: 204 after 1.5 s\n  request headers:\n    (none)\n"),
            "{long}"
        );
        assert!(long.ends_with("  response body: (empty)\n"), "{long}");
    }

    #[test]
    fn actions_read_as_sentences() {
        assert_eq!(
            enabled(&json!({"name": "crm", "enabled": true, "changed": true, "resumed": 12})),
            "crm enabled; 12 parked deliveries resumed\n"
        );
        assert_eq!(
            enabled(&json!({"name": "crm", "enabled": true, "changed": false, "resumed": 1})),
            "crm was already enabled; 1 parked delivery resumed\n"
        );
        assert_eq!(
            disabled(
                &json!({"name": "crm", "enabled": false, "changed": true}),
                Some("maintenance")
            ),
            "crm disabled (maintenance); its deliveries are parked until `hookd enable crm`\n"
        );
        assert_eq!(
            disabled(&json!({"name": "crm", "enabled": false, "changed": false}), None),
            "crm was already disabled\n"
        );
        assert_eq!(
            retried(&json!({"id": "dlv_1", "action": "retried"})),
            "dlv_1: next attempt due now\n"
        );
        assert_eq!(
            retried(&json!({"id": "dlv_1", "action": "replayed"})),
            "dlv_1 was dead: replayed, due now, attempts reset\n"
        );
        assert_eq!(
            retried(&json!({"id": "dlv_1", "action": "already_due"})),
            "dlv_1 is already due: nothing to do\n"
        );
        assert_eq!(
            replayed(&json!({"id": "dlv_1", "replayed": true})),
            "dlv_1 replayed: due now, attempts reset\n"
        );
        assert_eq!(
            event_replayed(
                "evt_1",
                &json!({"event_id": "evt_1", "duplicate": false, "deliveries": [{"id": "dlv_9", "subscription": "crm"}]})
            ),
            "event evt_1 replayed: 1 new delivery\nDELIVERY  SUBSCRIPTION\ndlv_9     crm\n"
        );
        assert_eq!(
            event_replayed("evt_1", &json!({"duplicate": true, "deliveries": []})),
            "event evt_1: this replay key was used before; nothing replayed\n"
        );
        let dead_table = dead(
            &json!({"deliveries": [{"id": "dlv_1", "subscription": "crm", "event_type": "a.b",
            "created_at": "2026-11-23T10:04:05Z", "attempts": 6, "last_error": "connect: refused"}]}),
        );
        assert_eq!(
            dead_table,
            "DELIVERY  SUBSCRIPTION  EVENT TYPE  CREATED              ATTEMPTS  LAST ERROR\n\
             dlv_1     crm           a.b         2026-11-23 10:04:05         6  connect: refused\n"
        );
    }
    #[test]
    fn subscription_flags_make_a_body_or_a_merge_patch() {
        let args = SubscriptionArgs {
            name: Some("orders".into()),
            url: Some("https://acme.example/hooks".into()),
            events: vec!["order.*".into(), "coupon.redeemed".into()],
            headers: vec!["x-team=billing".into(), "authorization=Bearer a=b".into()],
            tenant: Some("acme".into()),
            rate_limit: Some("10/20".into()),
            max_in_flight: Some(4),
            timeout: Some("5s".into()),
            ..Default::default()
        };
        assert_eq!(
            args.create_body().unwrap(),
            json!({
                "name": "orders", "url": "https://acme.example/hooks", "events": ["order.*", "coupon.redeemed"],
                "headers": {"x-team": "billing", "authorization": "Bearer a=b"}, "tenant": "acme",
                "rate_limit": {"per_second": 10.0, "burst": 20}, "max_in_flight": 4, "timeout": "5s"
            })
        );
        let missing = SubscriptionArgs {
            name: Some("orders".into()),
            ..Default::default()
        };
        assert_eq!(
            missing.create_body().unwrap_err().to_string(),
            "a new subscription needs --name, --url and --event (missing: --url, --event)"
        );

        // Only what is given; a rate without a burst clears the old burst.
        let patch = SubscriptionArgs {
            url: Some("https://acme.example/v2".into()),
            rate_limit: Some("0.5".into()),
            no_description: true,
            no_headers: vec!["x-team".into()],
            max_retries: Some(0),
            ..Default::default()
        };
        assert_eq!(
            patch.patch().unwrap(),
            json!({
                "url": "https://acme.example/v2", "rate_limit": {"per_second": 0.5, "burst": null},
                "description": null, "headers": {"x-team": null}, "max_retries": 0
            })
        );
        let clear = SubscriptionArgs {
            no_rate_limit: true,
            ..Default::default()
        };
        assert_eq!(clear.patch().unwrap(), json!({"rate_limit": null}));
        assert!(SubscriptionArgs::default()
            .patch()
            .unwrap_err()
            .to_string()
            .starts_with("nothing to change: give at least one of --name"));
    }

    #[test]
    fn bad_subscription_flags_say_what_to_write() {
        let with = |f: fn(&mut SubscriptionArgs)| {
            let mut args = SubscriptionArgs {
                name: Some("n".into()),
                url: Some("https://x.example".into()),
                events: vec!["*".into()],
                ..Default::default()
            };
            f(&mut args);
            args.create_body().unwrap_err().to_string()
        };
        assert_eq!(
            with(|a| a.headers = vec!["x-team".into()]),
            "--header `x-team`: write NAME=VALUE, like --header x-team=billing"
        );
        assert_eq!(
            with(|a| a.headers = vec!["=v".into()]),
            "--header `=v`: write NAME=VALUE, like --header x-team=billing"
        );
        assert_eq!(
            with(|a| a.rate_limit = Some("fast".into())),
            "--rate-limit `fast`: write PER_SECOND or PER_SECOND/BURST, like 10 or 0.5/2 or 10/20; \
             the rate is a number above 0"
        );
        assert_eq!(
            with(|a| a.rate_limit = Some("10/0".into())),
            "--rate-limit `10/0`: write PER_SECOND or PER_SECOND/BURST, like 10 or 0.5/2 or 10/20; \
             the burst is a whole number from 1"
        );
        assert!(with(|a| a.rate_limit = Some("-1".into())).contains("above 0"));
        assert_eq!(
            with(|a| a.timeout = Some("soon".into())),
            "--timeout `soon`: give a duration above zero, like 500ms, 5s, 24h"
        );
        assert!(with(|a| a.tenant = Some("Acme Inc".into()))
            .starts_with("--tenant `Acme Inc`: `Acme Inc` is not a tenant id"));
        assert_eq!(parse_header("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert_eq!(parse_header("x-empty=").unwrap(), ("x-empty".into(), "".into()));
        assert_eq!(parse_rate_limit("10", false).unwrap(), json!({"per_second": 10.0}));
        assert_eq!(
            rotate_body(Some("1 fortnight"), None).unwrap_err().to_string(),
            "--grace `1 fortnight`: give a duration above zero, like 500ms, 5s, 24h"
        );
        assert_eq!(rotate_body(Some("24h"), None).unwrap(), json!({"grace": "24h"}));
        assert_eq!(rotate_body(None, None).unwrap(), json!({}));
        assert_eq!(rotate_body(None, Some("ed25519")).unwrap(), json!({"kind": "ed25519"}));
        assert_eq!(test_body("coupon.redeemed"), json!({"type": "coupon.redeemed"}));
        assert_eq!(
            subscriptions_path(Some("acme"), Some(2), Some("sub_1")),
            "/v1/subscriptions?tenant=acme&limit=2&cursor=sub_1"
        );
        assert_eq!(subscriptions_path(None, None, None), "/v1/subscriptions");
    }

    #[test]
    fn tenant_flags_make_a_body_or_a_merge_patch() {
        assert_eq!(
            tenant_create_body("acme", "Acme Inc.", Some("free"), Some(r#"{"region": "eu"}"#)).unwrap(),
            json!({"id": "acme", "name": "Acme Inc.", "plan": "free", "metadata": {"region": "eu"}})
        );
        assert_eq!(
            tenant_create_body("acme", "Acme Inc.", None, None).unwrap(),
            json!({"id": "acme", "name": "Acme Inc."})
        );
        assert!(tenant_create_body("Acme", "A", None, None)
            .unwrap_err()
            .to_string()
            .starts_with("ID `Acme`: `Acme` is not a tenant id"));
        assert_eq!(
            tenant_create_body("acme", "A", None, Some("[1]"))
                .unwrap_err()
                .to_string(),
            r#"--metadata `[1]`: give a JSON object, like {"region": "eu"}"#
        );
        assert!(tenant_create_body("acme", "A", None, Some("{region"))
            .unwrap_err()
            .to_string()
            .starts_with("--metadata `{region`: not JSON: "));
        assert_eq!(
            tenant_patch(None, None, true, Some(r#"{"region": null}"#)).unwrap(),
            json!({"plan": null, "metadata": {"region": null}})
        );
        assert_eq!(
            tenant_patch(Some("Acme"), Some("pro"), false, None).unwrap(),
            json!({"name": "Acme", "plan": "pro"})
        );
        assert_eq!(
            tenant_patch(None, None, false, None).unwrap_err().to_string(),
            "nothing to change: give at least one of --name, --plan, --no-plan, --metadata"
        );
    }

    #[test]
    fn key_requests_pick_the_route_and_the_default_role() {
        assert_eq!(
            key_request(Some("acme"), None, Some("ci")).unwrap(),
            (
                "/v1/tenants/acme/keys".to_string(),
                json!({"role": "tenant", "label": "ci"})
            )
        );
        assert_eq!(
            key_request(None, None, None).unwrap(),
            ("/v1/keys".to_string(), json!({"role": "admin"}))
        );
        assert_eq!(
            key_request(Some("acme"), Some("producer"), None).unwrap().1,
            json!({"role": "producer"})
        );
        assert_eq!(
            key_request(Some("acme"), Some("admin"), None).unwrap_err().to_string(),
            "--role `admin`: an admin key belongs to no tenant: leave out --tenant"
        );
        assert_eq!(
            key_request(None, Some("tenant"), None).unwrap_err().to_string(),
            "--role `tenant`: a tenant key needs --tenant ID"
        );
        assert_eq!(keys_path(Some("acme")), "/v1/tenants/acme/keys");
        assert_eq!(keys_path(None), "/v1/keys");
    }

    #[test]
    fn event_type_flags_make_the_whole_type() {
        let read = |path: &str| -> std::io::Result<String> {
            match path {
                "schema.json" => Ok(r#"{"type": "object"}"#.into()),
                "broken.json" => Ok("{".into()),
                _ => Err(std::io::Error::new(std::io::ErrorKind::NotFound, "No such file")),
            }
        };
        assert_eq!(parse_schema("schema.json", read).unwrap(), json!({"type": "object"}));
        assert_eq!(
            parse_schema(r#"{"type": "string"}"#, read).unwrap(),
            json!({"type": "string"})
        );
        assert_eq!(
            parse_schema("missing.json", read).unwrap_err().to_string(),
            "--schema `missing.json`: neither JSON nor a file to read (No such file)"
        );
        assert!(parse_schema("broken.json", read)
            .unwrap_err()
            .to_string()
            .starts_with("--schema `broken.json`: the file is not JSON: "));
        assert_eq!(
            event_type_body(
                Some("a coupon was redeemed"),
                Some(json!({"type": "object"})),
                Some(r#"{"code": "X"}"#),
                false
            )
            .unwrap(),
            json!({"description": "a coupon was redeemed", "schema": {"type": "object"},
                   "example": {"code": "X"}, "deprecated": false})
        );
        assert_eq!(
            event_type_body(None, None, None, true).unwrap(),
            json!({"deprecated": true})
        );
        assert!(event_type_body(None, None, Some("{x"), false)
            .unwrap_err()
            .to_string()
            .starts_with("--example `{x`: not JSON"));
    }

    #[test]
    fn tenants_and_keys_render_from_their_typed_answers() {
        let acme = json!({
            "id": "acme", "name": "Acme Inc.", "plan": "free", "metadata": {"region": "eu"}, "source": "api",
            "subscriptions": 2, "created_at": "2026-11-23T10:04:05.123Z", "updated_at": "2026-11-23T10:04:05.123Z"
        });
        let ops = json!({
            "id": "ops", "name": "Operations", "plan": null, "metadata": {}, "source": "config",
            "subscriptions": 0, "created_at": null, "updated_at": null
        });
        assert_eq!(
            tenants(&json!({"tenants": [acme, ops]})).unwrap(),
            "ID    NAME        PLAN  SUBSCRIPTIONS  SOURCE  CREATED              UPDATED\n\
             acme  Acme Inc.   free              2  api     2026-11-23 10:04:05  2026-11-23 10:04:05\n\
             ops   Operations  -                 0  config  -                    -\n"
        );
        let shown = tenant(&acme).unwrap();
        assert!(shown.contains("metadata       {\"region\":\"eu\"}\n"), "{shown}");
        assert!(tenant(&ops).unwrap().contains("plan           -\n"));
        assert_eq!(
            tenant_saved(&acme, "created").unwrap(),
            "tenant acme (Acme Inc., plan free) created\n"
        );
        assert_eq!(
            tenant_saved(&ops, "updated").unwrap(),
            "tenant ops (Operations) updated\n"
        );
        assert!(tenants(&json!({"oops": []}))
            .unwrap_err()
            .to_string()
            .starts_with("hookd's answer lacks `tenants`"));
        assert_eq!(
            tenant_deleted(&json!({"id": "acme", "deleted": true, "subscriptions_deleted": ["sub_1", "sub_2"]})),
            "tenant acme deleted with 2 subscriptions: sub_1, sub_2 (their pending deliveries cancelled) \
             and its keys revoked\n"
        );
        assert_eq!(
            tenant_deleted(&json!({"id": "acme", "deleted": true, "subscriptions_deleted": []})),
            "tenant acme deleted with no subscriptions (their pending deliveries cancelled) and its keys revoked\n"
        );

        let listed = keys(&json!({"keys": [
            {"id": "key_1", "role": "tenant", "tenant": "acme", "label": "ci",
             "created_at": "2026-11-23T10:04:05Z", "last_used_at": null},
            {"id": "key_22", "role": "producer", "tenant": null, "label": null,
             "created_at": "2026-11-23T10:04:05Z", "last_used_at": "2026-11-23T11:00:00Z"}
        ]}))
        .unwrap();
        assert_eq!(
            listed,
            "ID      ROLE      TENANT  LABEL  CREATED              LAST USED\n\
             key_1   tenant    acme    ci     2026-11-23 10:04:05  -\n\
             key_22  producer  -       -      2026-11-23 10:04:05  2026-11-23 11:00:00\n"
        );
        let made =
            key_created(&json!({"id": "key_1", "key": "hk_secret", "role": "tenant", "tenant": "acme"})).unwrap();
        assert_eq!(
            made,
            "key_1 made (tenant key of tenant acme):\n\n    hk_secret\n\n\
             Copy it now: it will not be shown again (hookd keeps only its hash).\n\
             Revoke it with `hookd keys revoke key_1 --tenant acme`.\n"
        );
        let admin = key_created(&json!({"id": "key_2", "key": "hk_x", "role": "admin", "tenant": null})).unwrap();
        assert!(admin.starts_with("key_2 made (admin key):\n"), "{admin}");
        assert!(admin.ends_with("`hookd keys revoke key_2`.\n"), "{admin}");
        assert!(key_created(&json!({"id": "key_3"})).is_err());
        assert_eq!(
            key_revoked(&json!({"id": "key_1", "revoked": true})),
            "key key_1 revoked: it stops working within a second\n"
        );
    }

    #[test]
    fn subscription_actions_read_as_sentences() {
        let made = json!({"id": "sub_1", "name": "orders", "tenant": "acme", "secret": "whsec_abc"});
        assert_eq!(
            subscription_created(&made),
            "subscription sub_1 (orders) made for tenant acme\n\nsigning secret:\n\n    whsec_abc\n\n\
             Verify its webhooks with this secret; `hookd subscriptions secret sub_1` shows it again.\n"
        );
        assert_eq!(
            subscription_updated(&made, &json!({"url": "u", "events": ["a"]})),
            "subscription sub_1 (orders) updated: events, url\n"
        );
        assert_eq!(
            subscription_deleted(&json!({"id": "sub_1", "deleted": true})),
            "subscription sub_1 deleted; its pending deliveries are cancelled\n"
        );
        assert_eq!(
            secret(&json!({"id": "sub_1", "secret": "whsec_b", "secrets": ["whsec_a", "whsec_b"]})),
            "whsec_b\nalso signing until their grace ends: whsec_a\n"
        );
        assert_eq!(
            secret(&json!({"id": "sub_1", "secret": "whsec_b", "secrets": ["whsec_b"]})),
            "whsec_b\n"
        );
        assert_eq!(
            secret_rotated(&json!({"id": "sub_1", "secret": "whsec_new", "previous_expire_at": "2026-11-24T10:00:00.5Z"})),
            "subscription sub_1: new signing secret:\n\n    whsec_new\n\n\
             the previous secret keeps signing too until 2026-11-24 10:00:00 UTC; give the new one to the receiver now.\n"
        );
        assert!(
            secret_rotated(&json!({"id": "sub_1", "secret": "whsec_new", "previous_expire_at": null}))
                .contains("\nthe previous secret stopped signing at once; ")
        );
        let made =
            json!({"id": "sub_2", "name": "o", "tenant": "acme", "secret": "whsk_sk", "public_keys": ["whpk_pk"]});
        let shown = subscription_created(&made);
        assert!(
            shown.contains("Ed25519 secret key (keep it; hookd signs with it):\n\n    whsk_sk\n"),
            "{shown}"
        );
        assert!(
            shown.contains("verifies v1a signatures with it):\n\n    whpk_pk\n"),
            "{shown}"
        );
        assert_eq!(
            secret(&json!({"id": "sub_2", "secret": "whsk_b", "secrets": ["whsec_a", "whsk_b"], "public_keys": ["whpk_b"]})),
            "whsk_b\nalso signing until their grace ends: whsec_a\npublic keys (receivers verify v1a signatures with these): whpk_b\n"
        );
        let rotated = secret_rotated(
            &json!({"id": "sub_2", "secret": "whsk_new", "public_key": "whpk_new", "previous_expire_at": null}),
        );
        assert!(
            rotated.contains("new Ed25519 secret key:\n\n    whsk_new\n\nits public key:\n\n    whpk_new\n"),
            "{rotated}"
        );
        assert!(
            rotated.ends_with("give the new public key to the receiver now.\n"),
            "{rotated}"
        );
        assert_eq!(
            test_sent("sub_1", &json!({"event_id": "evt_t", "delivery_id": "dlv_t"})),
            "test event evt_t sent to sub_1: delivery dlv_t (follow it with `hookd attempts dlv_t`)\n"
        );
        let redeemed = json!({"name": "coupon.redeemed", "description": "a coupon was redeemed",
            "schema": {"type": "object"}, "example": null, "deprecated": false, "source": "config"});
        let old = json!({"name": "stamp.old", "description": "", "schema": null, "example": {"a": 1},
            "deprecated": true, "source": "api"});
        let listed = event_types(&json!({"event_types": [redeemed, old]})).unwrap();
        assert_eq!(
            listed,
            "NAME             DEPRECATED  SCHEMA  EXAMPLE  SOURCE  DESCRIPTION\n\
             coupon.redeemed  -           yes     -        config  a coupon was redeemed\n\
             stamp.old        yes         -       yes      api     -\n"
        );
        assert!(event_types(&json!({})).is_err());
        assert_eq!(
            event_type_saved(&old).unwrap(),
            "event type stamp.old saved (deprecated), with an example\n"
        );
        assert_eq!(
            event_type_saved(&redeemed).unwrap(),
            "event type coupon.redeemed saved, with a schema\n"
        );
        assert_eq!(event_type_deleted("stamp.old"), "event type stamp.old deleted\n");
    }
}
