//! The console's frame and the pieces of HTML its pages share. Every
//! value goes through maud, which escapes it: nothing an event, an
//! endpoint or a tenant wrote can become markup.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::Ctx;

/// The whole page: head, navigation for `ctx` (none before signing in),
/// then `body` under the title. `refresh` reloads the page every so many
/// seconds (while something it shows is still moving).
pub fn page(ctx: Option<&Ctx>, title: &str, refresh: Option<u32>, body: Markup) -> Html<String> {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(seconds) = refresh {
                    meta http-equiv="refresh" content=(seconds);
                }
                title { (title) " · hookd" }
                link rel="stylesheet" href="/console/assets/console.css";
            }
            body {
                header {
                    a.brand href="/console" { "hookd" }
                    @if let Some(ctx) = ctx {
                        nav aria-label="main" {
                            a href="/console" { "Overview" }
                            a href="/console/subscriptions" { "Subscriptions" }
                            a href="/console/deliveries" { "Deliveries" }
                            a href="/console/event-types" { "Event types" }
                            @if ctx.operator() {
                                a href="/console/tenants" { "Tenants" }
                                a href="/console/plugins" { "Plugins" }
                                a href="/console/sessions" { "Sessions" }
                            }
                        }
                        div.who {
                            span { @match ctx.session.role.tenant() {
                                Some(t) => { "Tenant " strong { (t) } },
                                None => { "Operator" },
                            } }
                            form method="post" action="/console/sign-out" {
                                (csrf(ctx))
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    };
    Html(markup.into_string())
}

/// The hidden CSRF field every state-changing form carries.
pub fn csrf(ctx: &Ctx) -> Markup {
    html! { input type="hidden" name="csrf" value=(ctx.session.csrf); }
}

/// A page saying what went wrong, with `status`.
pub fn failure(status: StatusCode, message: &str) -> Response {
    let body = html! {
        p.error role="alert" { (message) }
        p { a href="/console" { "Back to the console" } }
    };
    let title = match status {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => "Not accepted",
        s if s.is_server_error() => "Something failed",
        _ => "Not done",
    };
    (status, page(None, title, None, body)).into_response()
}

/// A button posting to `action` with the CSRF token: how every action of
/// the console is asked for.
pub fn action(ctx: &Ctx, action: &str, label: &str) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            (csrf(ctx))
            button type="submit" { (label) }
        }
    }
}

/// A notice above a page's content.
pub fn notice(text: &str) -> Markup {
    html! { p.notice role="status" { (text) } }
}

/// A secret shown once, in a box to copy from.
pub fn secret_box(label: &str, value: &str, advice: &str) -> Markup {
    html! {
        div.secret {
            p { strong { (label) } }
            pre { code data-secret { (value) } }
            p.hint { (advice) }
        }
    }
}

/// An RFC 3339 time as `2026-11-26 13:50:30` (UTC), or `-`.
pub fn when(value: Option<&str>) -> String {
    match value {
        None => "-".into(),
        Some(text) => chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&chrono::Utc).format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|_| text.to_owned()),
    }
}

/// A [`chrono`] time as [`when`] writes it.
pub fn at(value: Option<chrono::DateTime<chrono::Utc>>) -> String {
    value
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

/// A JSON value, pretty, for a `<pre>`.
pub fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// A state as a word with a sign, so it reads without colour: `✓
/// delivered`, `✗ dead`, `… retrying`.
pub fn state(text: &str) -> Markup {
    let sign = match text {
        "delivered" | "active" => "✓",
        "dead" | "cancelled" | "expired" | "disabled" => "✗",
        "filtered" => "–",
        _ => "…",
    };
    html! { span class=(format!("state state-{text}")) { (PreEscaped(sign)) " " (text) } }
}

/// One labelled text field of a form, with the error meant for it (by
/// field name) shown beside it.
pub fn field(name: &str, label: &str, value: &str, hint: &str, errors: &FieldErrors) -> Markup {
    let error = errors.of(name);
    let id = format!("f-{name}");
    let error_id = format!("{id}-error");
    html! {
        div.field.invalid[error.is_some()] {
            label for=(id) { (label) }
            input id=(id) name=(name) value=(value) aria-invalid=[error.map(|_| "true")]
                aria-describedby=[error.map(|_| error_id.as_str())];
            @if let Some(message) = error {
                p.field-error id=(error_id) data-field=(name) { (message) }
            }
            @if !hint.is_empty() {
                p.hint { (hint) }
            }
        }
    }
}

/// A labelled textarea, as [`field`].
pub fn area(name: &str, label: &str, value: &str, hint: &str, errors: &FieldErrors) -> Markup {
    let error = errors.of(name);
    let id = format!("f-{name}");
    let error_id = format!("{id}-error");
    html! {
        div.field.invalid[error.is_some()] {
            label for=(id) { (label) }
            textarea id=(id) name=(name) rows="4" aria-invalid=[error.map(|_| "true")]
                aria-describedby=[error.map(|_| error_id.as_str())] { (value) }
            @if let Some(message) = error {
                p.field-error id=(error_id) data-field=(name) { (message) }
            }
            @if !hint.is_empty() {
                p.hint { (hint) }
            }
        }
    }
}

/// Errors of a submitted form, by field; those no field claims are shown
/// above the form.
#[derive(Clone, Debug, Default)]
pub struct FieldErrors {
    /// (field, message).
    pub by_field: Vec<(String, String)>,
    /// Errors for the form as a whole.
    pub general: Vec<String>,
}

impl FieldErrors {
    /// The error of `name`, if any.
    pub fn of(&self, name: &str) -> Option<&str> {
        self.by_field.iter().find(|(n, _)| n == name).map(|(_, m)| m.as_str())
    }

    /// Files an API error message under the field it names, if it names
    /// one of `fields`: the API's validation errors start with the field
    /// (`url: http:// endpoints are refused…`, `headers.x-team: …`), and
    /// serde's name it in backquotes (``missing field `url` ``).
    pub fn from_api(message: &str, fields: &[&str]) -> FieldErrors {
        let named = message
            .split_once(": ")
            .map(|(head, _)| head.split(['.', '[']).next().unwrap_or(head))
            .filter(|head| fields.contains(head))
            .or_else(|| {
                fields
                    .iter()
                    .copied()
                    .find(|f| message.contains(&format!("`{f}`")) && message.contains("field"))
            });
        match named {
            Some(field) => FieldErrors {
                by_field: vec![(field.to_owned(), message.to_owned())],
                general: Vec::new(),
            },
            None => FieldErrors {
                by_field: Vec::new(),
                general: vec![message.to_owned()],
            },
        }
    }

    /// Whether there is any error.
    pub fn any(&self) -> bool {
        !self.by_field.is_empty() || !self.general.is_empty()
    }

    /// The errors no field claims, above a form.
    pub fn summary(&self) -> Markup {
        html! {
            @for message in &self.general {
                p.error role="alert" { (message) }
            }
            @if !self.by_field.is_empty() {
                p.error role="alert" { "Not saved: see the field marked below." }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_find_their_field() {
        let fields = ["name", "url", "events", "headers", "rate_limit"];
        let e = FieldErrors::from_api("url: http:// endpoints are refused; use https", &fields);
        assert_eq!(e.of("url"), Some("url: http:// endpoints are refused; use https"));
        let e = FieldErrors::from_api("headers.x-team: is not a valid header name", &fields);
        assert!(e.of("headers").is_some());
        let e = FieldErrors::from_api("rate_limit.per_second: 0 is out of range", &fields);
        assert!(e.of("rate_limit").is_some());
        let e = FieldErrors::from_api("missing field `events`", &fields);
        assert!(e.of("events").is_some());
        let e = FieldErrors::from_api("plan `free` allows 3 subscriptions", &fields);
        assert!(e.by_field.is_empty());
        assert_eq!(e.general.len(), 1);
    }

    #[test]
    fn values_are_escaped() {
        let errors = FieldErrors::default();
        let html = field("name", "Name", "<script>alert(1)</script>", "", &errors).into_string();
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;"));
    }
}
