//! Subscriptions: the list with status and health, create and edit
//! forms, secret reveal and rotation, a test event, enable, disable,
//! delete and the bulk replay of failures.

use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{query, segment};
use crate::api::event_types::EventTypeAnswer;
use crate::api::subscriptions::SubscriptionAnswer;
use crate::console::view::{self, FieldErrors};
use crate::console::{render, Console, Ctx, Fields};

/// The fields of the subscription form, as the API names them.
const FIELDS: [&str; 11] = [
    "signature",
    "tenant",
    "name",
    "url",
    "events",
    "headers",
    "description",
    "rate_limit",
    "max_in_flight",
    "max_retries",
    "timeout",
];

pub(super) fn routes() -> Router<Console> {
    Router::new()
        .route("/console/subscriptions", get(list).post(create))
        .route("/console/subscriptions/new", get(new_form))
        .route("/console/subscriptions/{id}", get(show))
        .route("/console/subscriptions/{id}/edit", get(edit_form).post(edit))
        .route("/console/subscriptions/{id}/secret", post(reveal_secret))
        .route("/console/subscriptions/{id}/rotate-secret", post(rotate_secret))
        .route("/console/subscriptions/{id}/test", post(send_test))
        .route("/console/subscriptions/{id}/{action}", post(act))
}

#[derive(Deserialize)]
struct Listing {
    subscriptions: Vec<SubscriptionAnswer>,
    next_cursor: Option<String>,
}

#[derive(Deserialize, Default)]
struct ListQuery {
    #[serde(default)]
    cursor: String,
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    done: String,
}

/// What a finished action says on the page it lands on.
fn done_text(done: &str) -> Option<&'static str> {
    Some(match done {
        "created" => "Subscription created.",
        "saved" => "Changes saved: they apply to every delivery not yet attempted.",
        "enabled" => "Enabled: parked deliveries are on their way, oldest first.",
        "disabled" => "Disabled: new deliveries are parked until it is enabled again.",
        "deleted" => "Subscription deleted: its pending deliveries are cancelled.",
        "replayed" => "Its failed deliveries are queued again.",
        _ => return None,
    })
}

async fn list(State(console): State<Console>, ctx: Ctx, Query(q): Query<ListQuery>) -> Response {
    let path = format!(
        "/v1/subscriptions{}",
        query(&[("cursor", &q.cursor), ("tenant", &q.tenant), ("limit", "50")])
    );
    let listing: Listing = match console.api.get(&ctx.principal, &path).await {
        Ok(listing) => listing,
        Err(page) => return page,
    };
    let body = html! {
        @if let Some(text) = done_text(&q.done) { (view::notice(text)) }
        p { a.button href="/console/subscriptions/new" { "New subscription" } }
        @if ctx.operator() {
            form.filters method="get" action="/console/subscriptions" {
                label for="f-tenant" { "Tenant" }
                input id="f-tenant" name="tenant" value=(q.tenant) placeholder="all";
                button type="submit" { "Filter" }
            }
        }
        @if listing.subscriptions.is_empty() {
            p { "No subscriptions yet." }
        } @else {
            div.scroll {
                table {
                    thead { tr {
                        th { "Name" } th { "Endpoint" } th { "Events" }
                        @if ctx.operator() { th { "Tenant" } }
                        th { "Status" } th { "Health" } th { "Delivered" } th { "Retrying" } th { "Dead" }
                    } }
                    tbody {
                        @for s in &listing.subscriptions {
                            tr {
                                td { a href=(format!("/console/subscriptions/{}", segment(s.id.as_str()))) { (s.name) } }
                                td.url { (s.url) }
                                td { (s.events.join(", ")) }
                                @if ctx.operator() { td { (s.tenant.as_ref().map(|t| t.to_string()).unwrap_or_else(|| "operator".into())) } }
                                td { (view::state(&s.status)) }
                                td { (health(s)) }
                                td.num { (s.counts.delivered) }
                                td.num { (s.counts.retrying) }
                                td.num { (s.counts.dead) }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(cursor) = &listing.next_cursor {
            p { a href=(format!("/console/subscriptions{}", query(&[("cursor", cursor), ("tenant", &q.tenant)]))) { "Next page →" } }
        }
    };
    render(&ctx, "Subscriptions", body)
}

/// Health in words: failing since when, or when it last succeeded.
fn health(s: &SubscriptionAnswer) -> Markup {
    html! {
        @if s.consecutive_failures > 0 {
            "✗ failing: " (s.consecutive_failures) " in a row since " (view::at(s.failing_since))
        } @else if s.last_success_at.is_some() {
            "✓ last success " (view::at(s.last_success_at))
        } @else {
            "no attempt yet"
        }
    }
}

/// The values a form shows: what was typed, or the subscription's.
#[derive(Default)]
struct Values {
    tenant: String,
    name: String,
    url: String,
    events: String,
    headers: String,
    description: String,
    rate_limit: String,
    max_in_flight: String,
    max_retries: String,
    timeout: String,
    signature: String,
}

impl Values {
    fn of_form(form: &Fields) -> Values {
        let get = |n: &str| form.get(n).unwrap_or("").to_owned();
        Values {
            tenant: get("tenant"),
            name: get("name"),
            url: get("url"),
            events: get("events"),
            headers: get("headers"),
            description: get("description"),
            rate_limit: get("rate_limit"),
            max_in_flight: get("max_in_flight"),
            max_retries: get("max_retries"),
            timeout: get("timeout"),
            signature: get("signature"),
        }
    }

    fn of(s: &SubscriptionAnswer) -> Values {
        Values {
            tenant: s.tenant.as_ref().map(|t| t.to_string()).unwrap_or_default(),
            name: s.name.clone(),
            url: s.url.clone(),
            events: s.events.join(", "),
            headers: String::new(),
            description: s.description.clone().unwrap_or_default(),
            rate_limit: s
                .rate_limit
                .map(|r| match r.burst {
                    Some(b) => format!("{}/{b}", r.per_second),
                    None => r.per_second.to_string(),
                })
                .unwrap_or_default(),
            max_in_flight: s.max_in_flight.map(|n| n.to_string()).unwrap_or_default(),
            max_retries: s.max_retries.map(|n| n.to_string()).unwrap_or_default(),
            timeout: s.timeout.clone().unwrap_or_default(),
            signature: String::new(),
        }
    }
}

/// The form, for a new subscription (`existing` none) or an edit.
fn form(ctx: &Ctx, action: &str, v: &Values, existing: Option<&SubscriptionAnswer>, errors: &FieldErrors) -> Markup {
    html! {
        (errors.summary())
        form.card method="post" action=(action) novalidate {
            (view::csrf(ctx))
            @if ctx.operator() && existing.is_none() {
                (view::field("tenant", "Tenant", &v.tenant, "The tenant it belongs to (its id).", errors))
            }
            (view::field("name", "Name", &v.name, "Unique among the tenant's subscriptions.", errors))
            @if existing.is_none() {
                div.field {
                    label for="f-signature" { "Signature" }
                    select id="f-signature" name="signature" {
                        option value="hmac" selected[v.signature != "ed25519"] { "HMAC-SHA256 (v1): a shared secret" }
                        option value="ed25519" selected[v.signature == "ed25519"] { "Ed25519 (v1a): receivers hold only a public key" }
                    }
                }
            }
            (view::field("url", "Endpoint URL", &v.url, "Where the webhooks are POSTed: https://…", errors))
            (view::field("events", "Event types", &v.events, "Comma-separated: exact (coupon.redeemed), prefix (coupon.*) or *.", errors))
            @if existing.is_some_and(|s| !s.headers.is_empty()) {
                p.hint { "Headers set now: " (existing.map(|s| s.headers.join(", ")).unwrap_or_default()) " (values are not shown)." }
            }
            (view::area("headers", if existing.is_some() { "Set headers" } else { "Custom headers" }, &v.headers,
                "One per line: name: value. On an edit, a name with no value removes that header.", errors))
            (view::field("description", "Description", &v.description, "", errors))
            (view::field("rate_limit", "Rate limit", &v.rate_limit, "Requests per second, optionally /burst: 5 or 0.5/2. Empty: none.", errors))
            (view::field("max_in_flight", "Most in flight", &v.max_in_flight, "Empty: the default.", errors))
            (view::field("max_retries", "Retries", &v.max_retries, "Empty: the default.", errors))
            (view::field("timeout", "Timeout", &v.timeout, "Of one attempt, like 5s. Empty: the default.", errors))
            button type="submit" { @if existing.is_some() { "Save" } @else { "Create" } }
        }
    }
}

/// The API body of a form: only what was typed (`edit`: empty clears).
fn body_of(form: &Fields, edit: bool) -> Result<Value, FieldErrors> {
    let mut out = Map::new();
    let bad = |field: &str, message: String| FieldErrors {
        by_field: vec![(field.to_owned(), format!("{field}: {message}"))],
        general: Vec::new(),
    };
    let clear = |out: &mut Map<String, Value>, name: &str| {
        if edit {
            out.insert(name.into(), Value::Null);
        }
    };
    if !edit {
        if let Some(kind) = form.text("signature") {
            out.insert("signature".into(), json!(kind));
        }
    }
    for name in ["tenant", "name", "url", "description", "timeout"] {
        match form.text(name) {
            Some(v) => {
                out.insert(name.into(), json!(v));
            }
            None if name == "description" || name == "timeout" => clear(&mut out, name),
            None => {}
        }
    }
    if let Some(events) = form.text("events") {
        let list: Vec<&str> = events
            .split([',', ' ', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        out.insert("events".into(), json!(list));
    } else if !edit {
        out.insert("events".into(), json!([]));
    }
    let mut headers = Map::new();
    for line in form.get("headers").unwrap_or("").lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad("headers", format!("`{line}` is not `name: value`")));
        };
        let value = value.trim();
        headers.insert(
            name.trim().to_ascii_lowercase(),
            if value.is_empty() && edit {
                Value::Null
            } else {
                json!(value)
            },
        );
    }
    if !headers.is_empty() {
        out.insert("headers".into(), Value::Object(headers));
    }
    match form.text("rate_limit") {
        Some(text) => {
            let (rate, burst) = match text.split_once('/') {
                Some((r, b)) => (r.trim(), Some(b.trim())),
                None => (text.as_str(), None),
            };
            let per_second: f64 = rate
                .parse()
                .map_err(|_| bad("rate_limit", format!("`{rate}` is not a number of requests per second")))?;
            let mut limit = json!({ "per_second": per_second });
            if let Some(b) = burst {
                let b: u32 = b
                    .parse()
                    .map_err(|_| bad("rate_limit", format!("burst `{b}` is not a whole number")))?;
                limit["burst"] = json!(b);
            }
            out.insert("rate_limit".into(), limit);
        }
        None => clear(&mut out, "rate_limit"),
    }
    for name in ["max_in_flight", "max_retries"] {
        match form.text(name) {
            Some(text) => {
                let n: u64 = text
                    .parse()
                    .map_err(|_| bad(name, format!("`{text}` is not a whole number")))?;
                out.insert(name.into(), json!(n));
            }
            None => clear(&mut out, name),
        }
    }
    Ok(Value::Object(out))
}

async fn new_form(ctx: Ctx) -> Response {
    let body = form(
        &ctx,
        "/console/subscriptions",
        &Values::default(),
        None,
        &FieldErrors::default(),
    );
    render(&ctx, "New subscription", body)
}

async fn create(State(console): State<Console>, ctx: Ctx, Form(fields): Form<Fields>) -> Response {
    if let Err(refused) = ctx.check(&fields) {
        return refused;
    }
    let again = |errors: FieldErrors| {
        let body = form(&ctx, "/console/subscriptions", &Values::of_form(&fields), None, &errors);
        (StatusCode::UNPROCESSABLE_ENTITY, render(&ctx, "New subscription", body)).into_response()
    };
    let body = match body_of(&fields, false) {
        Ok(body) => body,
        Err(errors) => return again(errors),
    };
    let answer = console
        .api
        .call(&ctx.principal, Method::POST, "/v1/subscriptions", Some(body))
        .await;
    if !answer.ok() {
        return again(FieldErrors::from_api(&answer.message(), &FIELDS));
    }
    let created: SubscriptionAnswer = match answer.into() {
        Ok(created) => created,
        Err(page) => return page,
    };
    let body = html! {
        (view::notice("Subscription created."))
        @if created.public_keys.is_empty() {
            (view::secret_box("Signing secret", created.secret.as_deref().unwrap_or(""),
                "Give it to the receiver now to verify signatures; it is shown again only on an explicit reveal."))
        } @else {
            (view::secret_box("Signing key (Ed25519)", created.secret.as_deref().unwrap_or(""),
                "Keep it secret: hookd signs with it. Receivers need only the public key below."))
            p { "Public key for receivers: " @for k in &created.public_keys { code data-public-key { (k) } } }
        }
        p { a.button href=(format!("/console/subscriptions/{}", segment(created.id.as_str()))) { "Go to " (created.name) } }
    };
    render(&ctx, &format!("Subscription {}", created.name), body)
}

async fn load(console: &Console, ctx: &Ctx, id: &str) -> Result<SubscriptionAnswer, Response> {
    console
        .api
        .get(&ctx.principal, &format!("/v1/subscriptions/{}", segment(id)))
        .await
}

#[derive(Deserialize)]
struct EventTypes {
    event_types: Vec<EventTypeAnswer>,
}

async fn show(
    State(console): State<Console>,
    ctx: Ctx,
    Path(id): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    let s = match load(&console, &ctx, &id).await {
        Ok(s) => s,
        Err(page) => return page,
    };
    let types: Vec<String> = match console.api.get::<EventTypes>(&ctx.principal, "/v1/event-types").await {
        Ok(list) => list.event_types.into_iter().map(|t| t.name).collect(),
        Err(_) => Vec::new(),
    };
    render(
        &ctx,
        &format!("Subscription {}", s.name),
        detail(&ctx, &s, &types, done_text(&q.done), None),
    )
}

/// A subscription's page; `shown` is what an action revealed.
fn detail(ctx: &Ctx, s: &SubscriptionAnswer, types: &[String], notice: Option<&str>, shown: Option<Markup>) -> Markup {
    let base = format!("/console/subscriptions/{}", segment(s.id.as_str()));
    let stored = s.id.as_str().starts_with(crate::model::STORED_ID_PREFIX);
    html! {
        @if let Some(text) = notice { (view::notice(text)) }
        @if let Some(shown) = shown { (shown) }
        dl.facts {
            dt { "Id" } dd { code { (s.id) } }
            dt { "Endpoint" } dd.url { (s.url) }
            dt { "Events" } dd { (s.events.join(", ")) }
            dt { "Tenant" } dd { (s.tenant.as_ref().map(|t| t.to_string()).unwrap_or_else(|| "operator (config file)".into())) }
            dt { "Status" } dd { (view::state(&s.status)) @if let Some(r) = &s.disabled_reason { " — " (r) } }
            dt { "Health" } dd { (health(s)) }
            dt { "Last failure" } dd { (view::at(s.last_failure_at)) }
            dt { "Deliveries" } dd {
                (s.counts.delivered) " delivered, " (s.counts.retrying) " retrying, "
                (s.counts.dead) " dead, " (s.counts.filtered) " filtered"
            }
            @if !s.headers.is_empty() { dt { "Headers" } dd { (s.headers.join(", ")) " (values hidden)" } }
            @if let Some(d) = &s.description { dt { "Description" } dd { (d) } }
            @if let Some(p) = &s.plugin { dt { "Plugin" } dd { code { (p) } } }
            @if !s.public_keys.is_empty() {
                dt { "Public keys" } dd { @for k in &s.public_keys { code data-public-key { (k) } " " } }
            }
        }
        div.actions {
            a.button href=(format!("/console/deliveries{}", query(&[("subscription", s.id.as_str())]))) { "Its deliveries" }
            @if stored { a.button href=(format!("{base}/edit")) { "Edit" } }
            @if s.status == "active" { (view::action(ctx, &format!("{base}/disable"), "Disable")) }
            @else { (view::action(ctx, &format!("{base}/enable"), "Enable")) }
            (view::action(ctx, &format!("{base}/replay"), "Replay its failures"))
            @if stored {
                (view::action(ctx, &format!("{base}/secret"), "Reveal the secret"))
                (view::action(ctx, &format!("{base}/delete"), "Delete"))
            }
        }
        @if stored {
            section.card {
                h2 { "Send a test event" }
                form method="post" action=(format!("{base}/test")) {
                    (view::csrf(ctx))
                    label for="f-type" { "Event type" }
                    @if types.is_empty() {
                        input id="f-type" name="type" placeholder="coupon.redeemed";
                    } @else {
                        select id="f-type" name="type" {
                            @for t in types { option value=(t) { (t) } }
                        }
                    }
                    button type="submit" { "Send test event" }
                }
                p.hint { "Goes through the real pipeline, signed, and shows its delivery as it arrives." }
            }
            section.card {
                h2 { "Rotate the secret" }
                form method="post" action=(format!("{base}/rotate-secret")) {
                    (view::csrf(ctx))
                    label for="f-grace" { "Old secret keeps signing for" }
                    input id="f-grace" name="grace" value="24h";
                    label for="f-kind" { "New secret" }
                    select id="f-kind" name="kind" {
                        option value="" { "same kind" }
                        option value="hmac" { "HMAC (v1)" }
                        option value="ed25519" { "Ed25519 (v1a)" }
                    }
                    button type="submit" { "Rotate" }
                }
            }
        }
    }
}

async fn edit_form(State(console): State<Console>, ctx: Ctx, Path(id): Path<String>) -> Response {
    let s = match load(&console, &ctx, &id).await {
        Ok(s) => s,
        Err(page) => return page,
    };
    let action = format!("/console/subscriptions/{}/edit", segment(s.id.as_str()));
    let body = form(&ctx, &action, &Values::of(&s), Some(&s), &FieldErrors::default());
    render(&ctx, &format!("Edit {}", s.name), body)
}

async fn edit(
    State(console): State<Console>,
    ctx: Ctx,
    Path(id): Path<String>,
    Form(fields): Form<Fields>,
) -> Response {
    if let Err(refused) = ctx.check(&fields) {
        return refused;
    }
    let s = match load(&console, &ctx, &id).await {
        Ok(s) => s,
        Err(page) => return page,
    };
    let path = format!("/v1/subscriptions/{}", segment(s.id.as_str()));
    let again = |errors: FieldErrors| {
        let action = format!("{path}/edit").replacen("/v1/", "/console/", 1);
        let body = form(&ctx, &action, &Values::of_form(&fields), Some(&s), &errors);
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            render(&ctx, &format!("Edit {}", s.name), body),
        )
            .into_response()
    };
    let body = match body_of(&fields, true) {
        Ok(body) => body,
        Err(errors) => return again(errors),
    };
    let answer = console.api.call(&ctx.principal, Method::PATCH, &path, Some(body)).await;
    if !answer.ok() {
        return again(FieldErrors::from_api(&answer.message(), &FIELDS));
    }
    Redirect::to(&format!("/console/subscriptions/{}?done=saved", segment(s.id.as_str()))).into_response()
}

/// Enable, disable, delete, replay: a POST to the API, then back.
async fn act(
    State(console): State<Console>,
    ctx: Ctx,
    Path((id, action)): Path<(String, String)>,
    Form(fields): Form<Fields>,
) -> Response {
    if let Err(refused) = ctx.check(&fields) {
        return refused;
    }
    let path = format!("/v1/subscriptions/{}", segment(&id));
    let (method, path, done) = match action.as_str() {
        "enable" => (Method::POST, format!("{path}/enable"), "enabled"),
        "disable" => (Method::POST, format!("{path}/disable"), "disabled"),
        "replay" => (Method::POST, format!("{path}/replay"), "replayed"),
        "delete" => (Method::DELETE, path, "deleted"),
        _ => {
            return view::failure(
                StatusCode::NOT_FOUND,
                &format!("no action `{action}` on a subscription"),
            )
        }
    };
    let body = (method == Method::POST).then(|| json!({}));
    let answer = console.api.call(&ctx.principal, method, &path, body).await;
    if !answer.ok() {
        return view::failure(answer.status, &answer.message());
    }
    if done == "deleted" {
        Redirect::to("/console/subscriptions?done=deleted").into_response()
    } else {
        Redirect::to(&format!("/console/subscriptions/{}?done={done}", segment(&id))).into_response()
    }
}

async fn reveal_secret(
    State(console): State<Console>,
    ctx: Ctx,
    Path(id): Path<String>,
    Form(fields): Form<Fields>,
) -> Response {
    let answer = match console
        .act(
            &ctx,
            &fields,
            Method::GET,
            &format!("/v1/subscriptions/{}/secret", segment(&id)),
            None,
        )
        .await
    {
        Ok(answer) => answer,
        Err(page) => return page,
    };
    let secrets: Vec<String> = answer.body["secrets"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["secret"].as_str().or(s.as_str()).map(str::to_owned))
                .collect()
        })
        .or_else(|| answer.body["secret"].as_str().map(|s| vec![s.to_owned()]))
        .unwrap_or_default();
    shown(&console, &ctx, &id, html! {
        @for s in &secrets {
            (view::secret_box("Signing secret", s, "Anyone holding it can forge this subscription's webhooks: keep it with the receiver only."))
        }
    })
    .await
}

/// The subscription's page with `markup` (a revealed secret) on top.
async fn shown(console: &Console, ctx: &Ctx, id: &str, markup: Markup) -> Response {
    let s = match load(console, ctx, id).await {
        Ok(s) => s,
        Err(page) => return page,
    };
    render(
        ctx,
        &format!("Subscription {}", s.name),
        detail(ctx, &s, &[], None, Some(markup)),
    )
}

async fn rotate_secret(
    State(console): State<Console>,
    ctx: Ctx,
    Path(id): Path<String>,
    Form(fields): Form<Fields>,
) -> Response {
    let grace = fields.text("grace").unwrap_or_else(|| "24h".into());
    let answer = match console
        .act(
            &ctx,
            &fields,
            Method::POST,
            &format!("/v1/subscriptions/{}/rotate-secret", segment(&id)),
            Some(match fields.text("kind") {
                Some(kind) => json!({ "grace": grace, "kind": kind }),
                None => json!({ "grace": grace }),
            }),
        )
        .await
    {
        Ok(answer) => answer,
        Err(page) => return page,
    };
    let secret = answer.body["secret"].as_str().unwrap_or("").to_owned();
    let public = answer.body["public_key"].as_str().map(str::to_owned);
    shown(&console, &ctx, &id, html! {
        (view::secret_box("New signing secret", &secret,
            &format!("The previous secret keeps signing beside it for {grace}: give this one to the receiver now.")))
        @if let Some(k) = &public { p { "Public key for receivers: " code data-public-key { (k) } } }
    })
    .await
}

async fn send_test(
    State(console): State<Console>,
    ctx: Ctx,
    Path(id): Path<String>,
    Form(fields): Form<Fields>,
) -> Response {
    if let Err(refused) = ctx.check(&fields) {
        return refused;
    }
    let mut body = json!({});
    if let Some(t) = fields.text("type") {
        body["type"] = json!(t);
    }
    let answer = console
        .api
        .call(
            &ctx.principal,
            Method::POST,
            &format!("/v1/subscriptions/{}/test", segment(&id)),
            Some(body),
        )
        .await;
    if !answer.ok() {
        return view::failure(answer.status, &answer.message());
    }
    match answer.body["delivery_id"].as_str() {
        Some(delivery) => Redirect::to(&format!("/console/deliveries/{}?test=1", segment(delivery))).into_response(),
        None => Redirect::to(&format!("/console/subscriptions/{}", segment(&id))).into_response(),
    }
}
