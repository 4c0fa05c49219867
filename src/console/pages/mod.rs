//! The console's pages. Each reads and acts through the API as its
//! session's principal ([`super::Api`]); forms post back here with the
//! session's CSRF token and answer with a redirect (`303`) to the page
//! showing the result, or with the form again, its errors beside their
//! fields.

pub mod deliveries;
pub mod operator;
pub mod overview;
pub mod subscriptions;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use axum_extra::extract::cookie::{Cookie, CookieJar};
use maud::html;
use serde::Deserialize;

use super::session::{Role, Via};
use super::{render, session_cookie, view, Console, Ctx, Fields};
use crate::api::event_types::EventTypeAnswer;
use crate::catalog::keys;
use crate::catalog::keys::Principal;

/// Every page and form of the console.
pub fn routes() -> Router<Console> {
    Router::new()
        .route("/console", get(overview::show))
        .route("/console/", get(|| async { Redirect::to("/console") }))
        .route("/console/sign-in", get(sign_in_form).post(sign_in))
        .route("/console/sign-out", post(sign_out))
        .route("/console/link/{token}", get(link_landing).post(link_open))
        .route("/console/event-types", get(event_types))
        .merge(subscriptions::routes())
        .merge(deliveries::routes())
        .merge(operator::routes())
}

#[derive(Deserialize)]
struct SignInQuery {
    ended: Option<String>,
}

async fn sign_in_form(State(console): State<Console>, Query(q): Query<SignInQuery>) -> Response {
    sign_in_page(
        &console,
        q.ended.is_some().then_some("Your session ended: sign in again."),
        None,
    )
}

fn sign_in_page(console: &Console, notice: Option<&str>, error: Option<&str>) -> Response {
    let open = console.state.open();
    let body = html! {
        @if let Some(text) = notice { (view::notice(text)) }
        form.card method="post" action="/console/sign-in" {
            div.field.invalid[error.is_some()] {
                label for="f-key" { "API key" }
                input id="f-key" name="key" type="password" autocomplete="current-password"
                    aria-invalid=[error.map(|_| "true")];
                @if let Some(message) = error {
                    p.field-error data-field="key" { (message) }
                }
                p.hint {
                    "An admin key (" code { "server.api_keys" } ") opens the operator console; "
                    "a tenant key opens its tenant's portal. Tenants usually arrive through a portal link instead."
                }
                @if open {
                    p.hint { "This hookd has no " code { "server.api_keys" } ": anyone may sign in as the operator. Set a key before serving tenants." }
                }
            }
            button type="submit" { "Sign in" }
        }
    };
    let status = if error.is_some() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    (status, view::page(None, "Sign in", None, body)).into_response()
}

async fn sign_in(State(console): State<Console>, jar: CookieJar, Form(form): Form<Fields>) -> Response {
    let key = form.get("key").map(str::trim).filter(|k| !k.is_empty());
    let config_key = || {
        key.filter(|_| !console.state.open())
            .map(|k| Via::ConfigKey { hash: keys::hash(k) })
    };
    let (role, via) = match crate::api::principal_of(&console.state, key) {
        Ok(Principal::Admin { key: Some(id) }) => (Role::Operator, Some(Via::Key { id })),
        Ok(Principal::Admin { key: None }) => (Role::Operator, config_key()),
        Ok(Principal::Tenant { tenant, key }) => {
            let generation = console
                .state
                .catalog
                .snapshot()
                .tenants
                .get(&tenant)
                .map(|(t, _)| t.generation.clone());
            let role = Role::Tenant {
                tenant,
                generation: generation.unwrap_or_default(),
            };
            (role, Some(Via::Key { id: key }))
        }
        Ok(Principal::Producer { .. }) => {
            return sign_in_page(
                &console,
                None,
                Some("producer keys only send events: use an admin or tenant key"),
            )
        }
        Err(_) => return sign_in_page(&console, None, Some("this key is not valid")),
    };
    start(&console, jar, role, via).await
}

/// Starts a session for `role` (signed in `via` a key, or a link) and
/// sends the browser to the overview.
async fn start(console: &Console, jar: CookieJar, role: Role, via: Option<Via>) -> Response {
    match console.sessions.start(role, via).await {
        Ok((token, _)) => {
            let ttl = cookie::time::Duration::seconds(console.state.console.session_ttl.as_secs() as i64);
            let jar = jar.add(session_cookie(console, token, ttl));
            (jar, Redirect::to("/console")).into_response()
        }
        Err(e) => view::failure(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("could not start a session: {e}"),
        ),
    }
}

async fn sign_out(State(console): State<Console>, ctx: Ctx, jar: CookieJar, Form(form): Form<Fields>) -> Response {
    if let Err(refused) = ctx.check(&form) {
        return refused;
    }
    if let Err(e) = console.sessions.end(&ctx.token).await {
        return view::failure(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("could not end the session: {e}"),
        );
    }
    let gone = Cookie::build((super::session::COOKIE, "")).path("/console").build();
    (jar.remove(gone), Redirect::to("/console/sign-in")).into_response()
}

/// A one-time link (a tenant's portal, or the operator's console): a page
/// with one button, so that only a person opens it
/// (a link preview fetching the URL spends nothing), and so that the
/// session starts from a page of the console itself (a `SameSite=Strict`
/// cookie set on a navigation from another site would not come back on
/// the redirect that follows).
async fn link_landing(State(console): State<Console>, Path(token): Path<String>) -> Response {
    match console.sessions.link_role(&token).await {
        Ok(Some(role)) => {
            let (title, text, button) = match role {
                Role::Tenant { .. } => (
                    "Webhook portal",
                    "This link opens your webhook portal: your subscriptions, their deliveries and their secrets.",
                    "Open the portal",
                ),
                Role::Operator => (
                    "hookd console",
                    "This link opens the operator's console of this hookd.",
                    "Open the console",
                ),
            };
            let body = html! {
                form.card method="post" action=(format!("/console/link/{token}")) {
                    p { (text) }
                    button type="submit" { (button) }
                }
            };
            view::page(None, title, None, body).into_response()
        }
        Ok(None) => spent_link(),
        Err(e) => view::failure(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

fn spent_link() -> Response {
    view::failure(
        StatusCode::GONE,
        "this link has expired or was opened already: ask for a new one",
    )
}

async fn link_open(State(console): State<Console>, jar: CookieJar, Path(token): Path<String>) -> Response {
    match console.sessions.redeem_link(&token).await {
        Ok(Some((role, by))) => {
            if let Role::Tenant { tenant, generation } = &role {
                if !console.tenant_exists(tenant, generation).await {
                    return spent_link();
                }
            }
            let via = Via::Link { by: by.map(Box::new) };
            if !super::via_still_valid(&console, &via) {
                // Its maker's key went before the link was opened.
                return spent_link();
            }
            start(&console, jar, role, Some(via)).await
        }
        Ok(None) => spent_link(),
        Err(e) => view::failure(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

#[derive(Deserialize)]
struct EventTypes {
    event_types: Vec<EventTypeAnswer>,
}

async fn event_types(State(console): State<Console>, ctx: Ctx) -> Response {
    let list: EventTypes = match console.api.get(&ctx.principal, "/v1/event-types").await {
        Ok(list) => list,
        Err(page) => return page,
    };
    let body = html! {
        @if list.event_types.is_empty() {
            p { "The catalogue is empty: subscriptions may name any event type." }
        }
        @for t in &list.event_types {
            section.card id=(format!("type-{}", t.name)) {
                h2 { code { (t.name) } @if t.deprecated { " (deprecated)" } }
                p { (t.description) }
                @if let Some(schema) = &t.schema {
                    details { summary { "Schema of " code { "data" } } pre { (view::pretty(schema)) } }
                }
                @if let Some(example) = &t.example {
                    details open { summary { "Example " code { "data" } } pre { (view::pretty(example)) } }
                }
            }
        }
    };
    render(&ctx, "Event types", body)
}

/// A path segment, percent-encoded, for building API paths from ids the
/// user typed.
pub fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A query string of the pairs whose value is not empty.
pub fn query(pairs: &[(&str, &str)]) -> String {
    let kept: Vec<String> = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", segment(v)))
        .collect();
    if kept.is_empty() {
        String::new()
    } else {
        format!("?{}", kept.join("&"))
    }
}
