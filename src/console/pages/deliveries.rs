//! The delivery log: filtered, newest first, a page at a time; one
//! delivery with every attempt; an event with its deliveries; retry and
//! replay.

use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{query, segment};
use crate::console::view;
use crate::console::{render, Console, Ctx, Fields};
use crate::history::DeliveryState;

pub(super) fn routes() -> Router<Console> {
    Router::new()
        .route("/console/deliveries", get(list))
        .route("/console/deliveries/{id}", get(show))
        .route("/console/deliveries/{id}/retry", post(retry))
        .route("/console/events/{id}", get(event))
        .route("/console/events/{id}/replay", post(replay_event))
}

#[derive(Deserialize, Default)]
struct Filter {
    #[serde(default)]
    subscription: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    event: String,
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    cursor: String,
}

/// A `datetime-local` value (`2026-11-26T13:50`, read as UTC) as RFC 3339;
/// anything else as typed, for the API to judge.
fn rfc3339(text: &str) -> String {
    if text.is_empty() || text.ends_with('Z') || text.contains('+') {
        return text.to_owned();
    }
    match text.len() {
        16 => format!("{text}:00Z"),
        19 => format!("{text}Z"),
        _ => text.to_owned(),
    }
}

async fn list(State(console): State<Console>, ctx: Ctx, Query(f): Query<Filter>) -> Response {
    if !f.event.trim().is_empty() {
        let tenant = tenant_query(&ctx, &f.tenant);
        return Redirect::to(&format!("/console/events/{}{tenant}", segment(f.event.trim()))).into_response();
    }
    let (from, to) = (rfc3339(&f.from), rfc3339(&f.to));
    let tenant = if ctx.operator() { f.tenant.as_str() } else { "" };
    let params = [
        ("subscription", f.subscription.as_str()),
        ("state", f.state.as_str()),
        ("tenant", tenant),
        ("from", from.as_str()),
        ("to", to.as_str()),
        ("cursor", f.cursor.as_str()),
        ("limit", "50"),
    ];
    let answer = console
        .api
        .call(
            &ctx.principal,
            Method::GET,
            &format!("/v1/deliveries{}", query(&params)),
            None,
        )
        .await;
    let (items, next, error) = if answer.ok() {
        let items = answer.body["deliveries"].as_array().cloned().unwrap_or_default();
        let next = answer.body["next_cursor"].as_str().map(str::to_owned);
        (items, next, None)
    } else {
        (Vec::new(), None, Some(answer.message()))
    };
    let older = next.as_ref().map(|cursor| {
        let mut more: Vec<(&str, &str)> = params
            .iter()
            .copied()
            .filter(|(k, _)| *k != "cursor" && *k != "limit")
            .collect();
        more.push(("cursor", cursor.as_str()));
        format!("/console/deliveries{}", query(&more))
    });
    let body = html! {
        form.filters method="get" action="/console/deliveries" {
            div { label for="f-subscription" { "Subscription" } input id="f-subscription" name="subscription" value=(f.subscription) placeholder="sub_… or name"; }
            div { label for="f-state" { "State" }
                select id="f-state" name="state" {
                    option value="" { "any" }
                    @for s in DeliveryState::ALL {
                        @let name = s.to_string();
                        option value=(name) selected[name == f.state] { (name) }
                    }
                }
            }
            div { label for="f-event" { "Event id" } input id="f-event" name="event" value=(f.event) placeholder="evt_…"; }
            @if ctx.operator() {
                div { label for="f-tenant" { "Tenant" } input id="f-tenant" name="tenant" value=(f.tenant); }
            }
            div { label for="f-from" { "From (UTC)" } input id="f-from" name="from" type="datetime-local" value=(f.from); }
            div { label for="f-to" { "To (UTC)" } input id="f-to" name="to" type="datetime-local" value=(f.to); }
            button type="submit" { "Filter" }
        }
        @if let Some(message) = &error { p.error role="alert" { (message) } }
        @if items.is_empty() && error.is_none() { p { "No deliveries match." } }
        @if !items.is_empty() {
            div.scroll { table.deliveries {
                thead { tr { th { "Created" } th { "Delivery" } th { "Event" } th { "Subscription" } th { "State" } th { "Attempts" } th { "Last" } } }
                tbody { @for d in &items { (row(d)) } }
            } }
        }
        @if let Some(href) = &older {
            p { a href=(href) { "Older →" } }
        }
    };
    render(&ctx, "Deliveries", body)
}

/// `?tenant=…` for an operator who named one; a tenant's session is
/// scoped by the API already.
fn tenant_query(ctx: &Ctx, tenant: &str) -> String {
    if ctx.operator() {
        query(&[("tenant", tenant)])
    } else {
        String::new()
    }
}

/// One delivery summary as a table row.
fn row(d: &Value) -> Markup {
    let text = |k: &str| d[k].as_str().unwrap_or("").to_owned();
    let last = match (d["last_status"].as_u64(), d["last_error"].as_str()) {
        (Some(status), _) => status.to_string(),
        (None, Some(error)) => error.to_owned(),
        (None, None) => "-".into(),
    };
    html! {
        tr {
            td { (view::when(d["created_at"].as_str())) }
            td { a href=(format!("/console/deliveries/{}", segment(&text("id")))) { code { (text("id")) } } }
            td { a href=(format!("/console/events/{}", segment(&text("event_id")))) { (text("event_type")) } }
            td { a href=(format!("/console/subscriptions/{}", segment(&text("subscription")))) { (text("subscription")) } }
            td { (view::state(&text("state"))) }
            td.num { (d["attempts"].as_u64().unwrap_or(0)) }
            td { (last) }
        }
    }
}

#[derive(Deserialize, Default)]
struct ShowQuery {
    #[serde(default)]
    test: String,
    #[serde(default)]
    done: String,
}

/// Whether a delivery in `state` may still change without anyone acting.
fn moving(state: &str) -> bool {
    matches!(state, "pending" | "retrying")
}

async fn show(
    State(console): State<Console>,
    ctx: Ctx,
    Path(id): Path<String>,
    Query(q): Query<ShowQuery>,
) -> Response {
    let answer = console
        .api
        .call(
            &ctx.principal,
            Method::GET,
            &format!("/v1/deliveries/{}/attempts", segment(&id)),
            None,
        )
        .await;
    if answer.status == StatusCode::NOT_FOUND && !q.test.is_empty() {
        // A test event just sent: the log has not heard of it yet.
        let body = html! {
            (view::notice("Test event sent: waiting for its first attempt…"))
            p { code { (id) } }
        };
        return view::page(Some(&ctx), "Delivery", Some(1), body).into_response();
    }
    if !answer.ok() {
        return view::failure(answer.status, &answer.message());
    }
    let d = &answer.body["delivery"];
    let attempts = answer.body["attempts"].as_array().cloned().unwrap_or_default();
    let state = d["state"].as_str().unwrap_or("");
    let text = |k: &str| d[k].as_str().unwrap_or("").to_owned();
    let event_id = text("event_id");
    let done = match q.done.as_str() {
        "retry" => Some("Queued again: it goes out now."),
        "replay" => Some("The event is sent again to its subscriptions."),
        _ => None,
    };
    let body = html! {
        @if let Some(text) = done { (view::notice(text)) }
        @if !q.test.is_empty() && moving(state) { (view::notice("Test event sent: this page follows its delivery.")) }
        dl.facts {
            dt { "Delivery" } dd { code { (text("id")) } }
            dt { "State" } dd { (view::state(state)) @if let Some(n) = d["note"].as_str() { " — " (n) } }
            dt { "Event" } dd { a href=(format!("/console/events/{}", segment(&event_id))) { (text("event_type")) " " code { (event_id) } } }
            dt { "Subscription" } dd { a href=(format!("/console/subscriptions/{}", segment(&text("subscription")))) { (text("subscription")) } }
            dt { "Created" } dd { (view::when(d["created_at"].as_str())) }
            dt { "Attempts" } dd { (d["attempts"].as_u64().unwrap_or(0)) }
            dt { "Next attempt" } dd { (view::when(d["next_attempt_at"].as_str())) }
        }
        div.actions {
            @if matches!(state, "retrying" | "dead") {
                (view::action(&ctx, &format!("/console/deliveries/{}/retry", segment(&id)), "Retry now"))
            }
            (view::action(&ctx, &format!("/console/events/{}/replay", segment(&event_id)), "Replay the event"))
        }
        h2 { "Attempts" }
        @if attempts.is_empty() { p { "No attempt yet." } }
        @for a in attempts.iter().rev() { (attempt(a)) }
    };
    let refresh = moving(state).then_some(2);
    view::page(Some(&ctx), "Delivery", refresh, body).into_response()
}

/// One attempt: request, response, timing, error.
fn attempt(a: &Value) -> Markup {
    let headers = |k: &str| -> Vec<(String, String)> { serde_json::from_value(a[k].clone()).unwrap_or_default() };
    let outcome = match (a["status"].as_u64(), a["error"].as_str()) {
        (Some(s), _) if (200..300).contains(&s) => format!("✓ {s}"),
        (Some(s), _) => format!("✗ {s}"),
        (None, Some(e)) => format!("✗ {e}"),
        (None, None) => "…".into(),
    };
    html! {
        section.card.attempt {
            h3 { "Attempt " (a["attempt"].as_u64().unwrap_or(0)) ": " span.outcome { (outcome) } }
            dl.facts {
                dt { "Started" } dd { (view::when(a["started_at"].as_str())) }
                dt { "Duration" } dd { (a["duration_ms"].as_u64().unwrap_or(0)) " ms" }
                @if let Some(kind) = a["error_kind"].as_str() { dt { "Error" } dd { (kind) ": " (a["error"].as_str().unwrap_or("")) } }
                dt { "Next attempt" } dd { (view::when(a["next_attempt_at"].as_str())) }
            }
            details open { summary { "Request headers" } (header_table(&headers("request_headers"))) }
            details open { summary { "Response headers" } (header_table(&headers("response_headers"))) }
            details open { summary { "Response body" } pre { (a["response_body"].as_str().unwrap_or("")) } }
        }
    }
}

fn header_table(headers: &[(String, String)]) -> Markup {
    html! {
        @if headers.is_empty() { p { "none" } }
        @else {
            div.scroll { table.headers { tbody { @for (n, v) in headers { tr { th { (n) } td { (v) } } } } } }
        }
    }
}

async fn retry(
    State(console): State<Console>,
    ctx: Ctx,
    Path(id): Path<String>,
    Form(fields): Form<Fields>,
) -> Response {
    if let Err(page) = console
        .act(
            &ctx,
            &fields,
            Method::POST,
            &format!("/v1/deliveries/{}/retry", segment(&id)),
            Some(json!({})),
        )
        .await
    {
        return page;
    }
    Redirect::to(&format!("/console/deliveries/{}?done=retry", segment(&id))).into_response()
}

#[derive(Deserialize, Default)]
struct EventQuery {
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    done: String,
}

async fn event(
    State(console): State<Console>,
    ctx: Ctx,
    Path(id): Path<String>,
    Query(q): Query<EventQuery>,
) -> Response {
    let tenant = tenant_query(&ctx, &q.tenant);
    let answer = console
        .api
        .call(
            &ctx.principal,
            Method::GET,
            &format!("/v1/events/{}{tenant}", segment(&id)),
            None,
        )
        .await;
    if !answer.ok() {
        return view::failure(answer.status, &answer.message());
    }
    let event = &answer.body["event"];
    let deliveries = answer.body["deliveries"].as_array().cloned().unwrap_or_default();
    let body = html! {
        @if q.done == "replay" { (view::notice("The event is sent again to its subscriptions.")) }
        dl.facts {
            dt { "Event" } dd { code { (id) } }
            @if let Some(t) = event["type"].as_str() { dt { "Type" } dd { (t) } }
            @if let Some(t) = event["created_at"].as_str() { dt { "Created" } dd { (view::when(Some(t))) } }
        }
        div.actions { (view::action(&ctx, &format!("/console/events/{}/replay{tenant}", segment(&id)), "Replay the event")) }
        h2 { "Body sent" }
        @if event.is_null() { p { "The log no longer keeps this event's body." } }
        @else if let Some(data) = event.get("data") { pre { (view::pretty(data)) } }
        @else { pre { (event["body"].as_str().unwrap_or("")) } }
        p.hint { "As ingested, before any plugin: the Standard Webhooks envelope's data." }
        h2 { "Deliveries" }
        div.scroll { table.deliveries {
            thead { tr { th { "Created" } th { "Delivery" } th { "Event" } th { "Subscription" } th { "State" } th { "Attempts" } th { "Last" } } }
            tbody { @for d in &deliveries { (row(d)) } }
        } }
    };
    render(&ctx, "Event", body)
}

async fn replay_event(
    State(console): State<Console>,
    ctx: Ctx,
    Path(id): Path<String>,
    Query(q): Query<EventQuery>,
    Form(fields): Form<Fields>,
) -> Response {
    let tenant = tenant_query(&ctx, &q.tenant);
    let path = format!("/v1/events/{}/replay{tenant}", segment(&id));
    if let Err(page) = console.act(&ctx, &fields, Method::POST, &path, Some(json!({}))).await {
        return page;
    }
    let sep = if tenant.is_empty() { "?" } else { "&" };
    Redirect::to(&format!("/console/events/{}{tenant}{sep}done=replay", segment(&id))).into_response()
}
