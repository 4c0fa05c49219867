//! Operator pages: tenants, their plans, keys and portal links; the
//! plugin registry, with a run of a plugin on an event.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::html;
use serde::Deserialize;
use serde_json::json;

use super::segment;
use crate::api::plugins::{PluginAnswer, RunAnswer};
use crate::api::portal::PortalLink;
use crate::api::tenants::{KeyAnswer, KeyCreated, TenantAnswer};
use crate::console::view::{self, FieldErrors};
use crate::console::{render, Console, Ctx, Fields};

pub(super) fn routes() -> Router<Console> {
    Router::new()
        .route("/console/tenants", get(list).post(create))
        .route("/console/tenants/{id}", get(show))
        .route("/console/tenants/{id}/keys", post(create_key))
        .route("/console/tenants/{id}/keys/{key}/revoke", post(revoke_key))
        .route("/console/tenants/{id}/portal", post(portal_link))
        .route("/console/tenants/{id}/delete", post(delete))
        .route("/console/plugins", get(plugins).post(run_plugin))
        .route("/console/sessions", get(sessions))
        .route("/console/sessions/{id}/end", post(end_session))
}

#[derive(Deserialize)]
struct SessionList {
    sessions: Vec<serde_json::Value>,
}

/// The live console sessions, each with a button that ends it.
async fn sessions(State(console): State<Console>, ctx: Ctx, Query(q): Query<Done>) -> Response {
    if let Err(page) = operator_only(&ctx) {
        return page;
    }
    let listed: SessionList = match console.api.get(&ctx.principal, "/v1/console/sessions").await {
        Ok(l) => l,
        Err(page) => return page,
    };
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    let via = |v: &serde_json::Value| -> String {
        let kind = v["kind"].as_str().unwrap_or("");
        match kind {
            "key" => format!("key {}", text(&v["key_id"])),
            "config_key" => "a server.api_keys key".into(),
            "link" => match v["made_by"]["kind"].as_str() {
                Some("key") => format!("a link made with key {}", text(&v["made_by"]["key_id"])),
                Some(_) => "a link made with a server.api_keys key".into(),
                None => "a link".into(),
            },
            _ => "the open API".into(),
        }
    };
    let body = html! {
        @if q.done == "ended" { (view::notice("Session ended: its browser is signed out at its next page.")) }
        @if listed.sessions.is_empty() { p { "No sessions." } }
        @else {
            div.scroll { table {
                thead { tr { th { "Session" } th { "For" } th { "Signed in with" } th { "Ends" } th {} } }
                tbody { @for s in &listed.sessions {
                    @let id = text(&s["id"]);
                    tr {
                        td { code { (id.chars().take(14).collect::<String>()) "…" } }
                        td { @match s["tenant"].as_str() { Some(t) => { "Tenant " (t) }, None => { "Operator" } } }
                        td { (via(&s["via"])) }
                        td { (text(&s["expires_at"])) }
                        td { (view::action(&ctx, &format!("/console/sessions/{}/end", segment(&id)), "End")) }
                    }
                } }
            } }
        }
    };
    render(&ctx, "Sessions", body)
}

async fn end_session(
    State(console): State<Console>,
    ctx: Ctx,
    Path(id): Path<String>,
    Form(fields): Form<Fields>,
) -> Response {
    let path = format!("/v1/console/sessions/{}", segment(&id));
    operator_delete(&console, &ctx, &fields, &path, "/console/sessions?done=ended").await
}

#[derive(Deserialize)]
struct Tenants {
    tenants: Vec<TenantAnswer>,
}

#[derive(Deserialize)]
struct Keys {
    keys: Vec<KeyAnswer>,
}

#[derive(Deserialize, Default)]
struct Done {
    #[serde(default)]
    done: String,
}

/// Refuses a tenant's session: these pages are the operator's.
fn operator_only(ctx: &Ctx) -> Result<(), Response> {
    if ctx.operator() {
        Ok(())
    } else {
        Err(view::failure(StatusCode::FORBIDDEN, "this page is the operator's"))
    }
}

/// An operator's form that deletes what `path` names through the API,
/// then goes to `then`; a tenant's session, a bad CSRF token or the API's
/// refusal is the page shown instead.
async fn operator_delete(console: &Console, ctx: &Ctx, fields: &Fields, path: &str, then: &str) -> Response {
    if let Err(page) = operator_only(ctx) {
        return page;
    }
    if let Err(page) = console.act(ctx, fields, Method::DELETE, path, None).await {
        return page;
    }
    Redirect::to(then).into_response()
}

const FIELDS: [&str; 3] = ["id", "name", "plan"];

async fn list(State(console): State<Console>, ctx: Ctx, Query(q): Query<Done>) -> Response {
    if let Err(page) = operator_only(&ctx) {
        return page;
    }
    list_page(
        &console,
        &ctx,
        &Fields::default(),
        &FieldErrors::default(),
        q.done == "deleted",
    )
    .await
}

async fn list_page(console: &Console, ctx: &Ctx, typed: &Fields, errors: &FieldErrors, deleted: bool) -> Response {
    let tenants: Tenants = match console.api.get(&ctx.principal, "/v1/tenants").await {
        Ok(t) => t,
        Err(page) => return page,
    };
    let plans: Vec<String> = console.state.catalog.snapshot().config.plans.keys().cloned().collect();
    let value = |n: &str| typed.get(n).unwrap_or("").to_owned();
    let body = html! {
        @if deleted { (view::notice("Tenant deleted, with its subscriptions and keys.")) }
        @if tenants.tenants.is_empty() { p { "No tenants yet." } }
        @else {
            div.scroll { table {
                thead { tr { th { "Tenant" } th { "Name" } th { "Plan" } th { "Subscriptions" } th { "Source" } th { "Created" } } }
                tbody { @for t in &tenants.tenants { tr {
                    td { a href=(format!("/console/tenants/{}", segment(t.id.as_str()))) { (t.id) } }
                    td { (t.name) }
                    td { (t.plan.as_deref().unwrap_or("-")) }
                    td.num { (t.subscriptions) }
                    td { (t.source) }
                    td { (view::at(t.created_at)) }
                } } }
            } }
        }
        h2 { "New tenant" }
        (errors.summary())
        form.card method="post" action="/console/tenants" novalidate {
            (view::csrf(ctx))
            (view::field("id", "Id", &value("id"), "Lowercase letters, digits, - and _: acme.", errors))
            (view::field("name", "Name", &value("name"), "", errors))
            (view::field("plan", "Plan", &value("plan"),
                &if plans.is_empty() { "No plans are configured.".to_owned() } else { format!("One of: {}.", plans.join(", ")) }, errors))
            button type="submit" { "Create tenant" }
        }
    };
    let status = if errors.any() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    (status, render(ctx, "Tenants", body)).into_response()
}

async fn create(State(console): State<Console>, ctx: Ctx, Form(fields): Form<Fields>) -> Response {
    if let Err(page) = operator_only(&ctx).and_then(|_| ctx.check(&fields)) {
        return page;
    }
    let mut body = json!({});
    for name in FIELDS {
        if let Some(v) = fields.text(name) {
            body[name] = json!(v);
        }
    }
    let answer = console
        .api
        .call(&ctx.principal, Method::POST, "/v1/tenants", Some(body))
        .await;
    if !answer.ok() {
        return list_page(
            &console,
            &ctx,
            &fields,
            &FieldErrors::from_api(&answer.message(), &FIELDS),
            false,
        )
        .await;
    }
    let id = fields.text("id").unwrap_or_default();
    Redirect::to(&format!("/console/tenants/{}?done=created", segment(&id))).into_response()
}

async fn show(State(console): State<Console>, ctx: Ctx, Path(id): Path<String>, Query(q): Query<Done>) -> Response {
    if let Err(page) = operator_only(&ctx) {
        return page;
    }
    let notice = match q.done.as_str() {
        "created" => Some("Tenant created."),
        "revoked" => Some("Key revoked: it stops working on every process within a second."),
        _ => None,
    };
    tenant_page(&console, &ctx, &id, notice, None).await
}

async fn tenant_page(
    console: &Console,
    ctx: &Ctx,
    id: &str,
    notice: Option<&str>,
    shown: Option<maud::Markup>,
) -> Response {
    let path = format!("/v1/tenants/{}", segment(id));
    let tenant: TenantAnswer = match console.api.get(&ctx.principal, &path).await {
        Ok(t) => t,
        Err(page) => return page,
    };
    let keys: Keys = match console.api.get(&ctx.principal, &format!("{path}/keys")).await {
        Ok(k) => k,
        Err(page) => return page,
    };
    let plan = tenant
        .plan
        .as_ref()
        .and_then(|p| console.state.catalog.snapshot().config.plans.get(p).cloned());
    let base = format!("/console/tenants/{}", segment(id));
    let body = html! {
        @if let Some(text) = notice { (view::notice(text)) }
        @if let Some(shown) = shown { (shown) }
        dl.facts {
            dt { "Id" } dd { code { (tenant.id) } }
            dt { "Name" } dd { (tenant.name) }
            dt { "Plan" } dd {
                (tenant.plan.as_deref().unwrap_or("none"))
                @if let Some(p) = &plan {
                    " — " (p.max_subscriptions.map(|n| format!("{n} subscriptions")).unwrap_or_else(|| "any number of subscriptions".into()))
                    @if let Some(rate) = p.events_per_second { ", " (rate) " events/s" }
                    @if let Some(n) = p.max_pending { ", at most " (n) " deliveries pending" }
                }
            }
            dt { "Subscriptions" } dd { a href=(format!("/console/subscriptions?tenant={}", segment(id))) { (tenant.subscriptions) } }
            dt { "Created" } dd { (view::at(tenant.created_at)) }
            @if !tenant.metadata.is_empty() { dt { "Metadata" } dd { pre { (view::pretty(&serde_json::Value::Object(tenant.metadata.clone()))) } } }
        }
        section.card {
            h2 { "Portal link" }
            p { "A one-time link that opens this tenant's portal, valid for a few minutes." }
            (view::action(ctx, &format!("{base}/portal"), "Make a portal link"))
        }
        section.card {
            h2 { "Keys" }
            @if keys.keys.is_empty() { p { "No keys." } }
            @else {
                div.scroll { table {
                    thead { tr { th { "Key" } th { "Role" } th { "Label" } th { "Created" } th { "Last used" } th {} } }
                    tbody { @for k in &keys.keys { tr {
                        td { code { (k.id) } }
                        td { (format!("{:?}", k.role).to_lowercase()) }
                        td { (k.label.as_deref().unwrap_or("")) }
                        td { (view::at(k.created_at)) }
                        td { (view::at(k.last_used_at)) }
                        td { (view::action(ctx, &format!("{base}/keys/{}/revoke", segment(&k.id)), "Revoke")) }
                    } } }
                } }
            }
            form method="post" action=(format!("{base}/keys")) {
                (view::csrf(ctx))
                label for="f-role" { "Role" }
                select id="f-role" name="role" { option value="tenant" { "tenant" } option value="producer" { "producer" } }
                label for="f-label" { "Label" }
                input id="f-label" name="label";
                button type="submit" { "Make a key" }
            }
        }
        @if tenant.source == "api" {
            section.card.danger {
                h2 { "Delete" }
                p { "Deletes its subscriptions (cancelling their pending deliveries) and revokes its keys." }
                (view::action(ctx, &format!("{base}/delete"), "Delete this tenant"))
            }
        }
    };
    render(ctx, &format!("Tenant {}", tenant.name), body)
}

async fn create_key(
    State(console): State<Console>,
    ctx: Ctx,
    Path(id): Path<String>,
    Form(fields): Form<Fields>,
) -> Response {
    if let Err(page) = operator_only(&ctx).and_then(|_| ctx.check(&fields)) {
        return page;
    }
    let mut body = json!({ "role": fields.text("role").unwrap_or_else(|| "tenant".into()) });
    if let Some(label) = fields.text("label") {
        body["label"] = json!(label);
    }
    let path = format!("/v1/tenants/{}/keys", segment(&id));
    let answer = console.api.call(&ctx.principal, Method::POST, &path, Some(body)).await;
    if !answer.ok() {
        return view::failure(answer.status, &answer.message());
    }
    let created: KeyCreated = match answer.into() {
        Ok(k) => k,
        Err(page) => return page,
    };
    let shown = view::secret_box(
        &format!("Key {}", created.id),
        &created.key,
        "Copy it now: it will not be shown again (hookd keeps only its hash).",
    );
    tenant_page(&console, &ctx, &id, None, Some(shown)).await
}

async fn revoke_key(
    State(console): State<Console>,
    ctx: Ctx,
    Path((id, key)): Path<(String, String)>,
    Form(fields): Form<Fields>,
) -> Response {
    let path = format!("/v1/tenants/{}/keys/{}", segment(&id), segment(&key));
    operator_delete(
        &console,
        &ctx,
        &fields,
        &path,
        &format!("/console/tenants/{}?done=revoked", segment(&id)),
    )
    .await
}

async fn portal_link(
    State(console): State<Console>,
    ctx: Ctx,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
    Form(fields): Form<Fields>,
) -> Response {
    if let Err(page) = operator_only(&ctx).and_then(|_| ctx.check(&fields)) {
        return page;
    }
    let path = format!("/v1/tenants/{}/portal", segment(&id));
    let answer = console
        .api
        .call_from(
            &ctx.principal,
            Some(&ctx.session.via),
            Method::POST,
            &path,
            None,
            &headers,
            &uri,
        )
        .await;
    let link: PortalLink = match answer.into() {
        Ok(link) => link,
        Err(page) => return page,
    };
    let shown = html! {
        div.secret {
            p { strong { "Portal link" } " (opens once, until " (view::at(Some(link.expires_at))) " UTC)" }
            pre { a id="portal-link" href=(link.url) { (link.url) } }
            p.hint { "Send it to the tenant, or open it in a private window to see what they see." }
        }
    };
    tenant_page(&console, &ctx, &id, None, Some(shown)).await
}

async fn delete(
    State(console): State<Console>,
    ctx: Ctx,
    Path(id): Path<String>,
    Form(fields): Form<Fields>,
) -> Response {
    let path = format!("/v1/tenants/{}", segment(&id));
    operator_delete(&console, &ctx, &fields, &path, "/console/tenants?done=deleted").await
}

#[derive(Deserialize)]
struct Plugins {
    plugins: Vec<PluginAnswer>,
}

/// An event to try a plugin on: the first catalogued type's example.
fn sample_event(console: &Console) -> String {
    let snapshot = console.state.catalog.snapshot();
    let sample = snapshot
        .event_types
        .values()
        .find_map(|(t, _)| t.example.as_ref().map(|e| json!({"type": t.name, "data": e})))
        .unwrap_or_else(|| json!({"type": "coupon.redeemed", "data": {"coupon": "SPRING10", "amount": 25}}));
    serde_json::to_string_pretty(&sample).unwrap_or_default()
}

async fn plugins(State(console): State<Console>, ctx: Ctx) -> Response {
    if let Err(page) = operator_only(&ctx) {
        return page;
    }
    let fields = Fields(vec![("event".into(), sample_event(&console))]);
    plugins_page(&console, &ctx, &fields, None, &FieldErrors::default()).await
}

async fn plugins_page(
    console: &Console,
    ctx: &Ctx,
    typed: &Fields,
    outcome: Option<&RunAnswer>,
    errors: &FieldErrors,
) -> Response {
    let list: Plugins = match console.api.get(&ctx.principal, "/v1/plugins").await {
        Ok(list) => list,
        Err(page) => return page,
    };
    let chosen = typed.get("plugin").unwrap_or("");
    let body = html! {
        @if list.plugins.is_empty() {
            p { "No plugins are registered: add " code { "[plugins.registry.NAME]" } " tables to the config file." }
        } @else {
            div.scroll { table {
                thead { tr { th { "Plugin" } th { "What it does" } } }
                tbody { @for p in &list.plugins { tr { td { code { (p.name) } } td { (p.description) } } } }
            } }
            h2 { "Try one" }
            (errors.summary())
            form.card method="post" action="/console/plugins" {
                (view::csrf(ctx))
                div.field {
                    label for="f-plugin" { "Plugin" }
                    select id="f-plugin" name="plugin" {
                        @for p in &list.plugins { option value=(p.name) selected[p.name == chosen] { (p.name) } }
                    }
                }
                (view::area("event", "Event", typed.get("event").unwrap_or(""), "As producers send it to POST /v1/events.", errors))
                (view::area("config", "Config", typed.get("config").unwrap_or(""), "One per line: key=value (a jq plugin's filter=…).", errors))
                button type="submit" { "Run" }
            }
        }
        @if let Some(run) = outcome {
            section.card id="plugin-run" {
                h2 { "Verdict: " (run.verdict) @if let Some(r) = &run.reason { " — " (r) } }
                p.hint { (run.elapsed_ms) " ms, loading included" }
                h3 { "Body before" }
                pre id="body-before" { (run.body_before) }
                h3 { "Body after" }
                @match &run.body_after {
                    Some(body) => pre id="body-after" { (body) },
                    None => p { "Dropped: nothing would be sent." },
                }
                @if let Some(headers) = &run.headers_after {
                    details { summary { "Headers after" }
                        table.headers { tbody { @for (n, v) in headers { tr { th { (n) } td { (v) } } } } }
                    }
                }
            }
        }
    };
    let status = if errors.any() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    (status, render(ctx, "Plugins", body)).into_response()
}

async fn run_plugin(State(console): State<Console>, ctx: Ctx, Form(fields): Form<Fields>) -> Response {
    if let Err(page) = operator_only(&ctx).and_then(|_| ctx.check(&fields)) {
        return page;
    }
    let field_error = |field: &str, message: String| FieldErrors {
        by_field: vec![(field.to_owned(), message)],
        general: Vec::new(),
    };
    let event: serde_json::Value = match serde_json::from_str(fields.get("event").unwrap_or("")) {
        Ok(event) => event,
        Err(e) => {
            let errors = field_error("event", format!("event: not JSON: {e}"));
            return plugins_page(&console, &ctx, &fields, None, &errors).await;
        }
    };
    let mut config = serde_json::Map::new();
    for line in fields
        .get("config")
        .unwrap_or("")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        match line.split_once('=') {
            Some((k, v)) => {
                config.insert(k.trim().to_owned(), json!(v.trim()));
            }
            None => {
                let errors = field_error("config", format!("config: `{line}` is not key=value"));
                return plugins_page(&console, &ctx, &fields, None, &errors).await;
            }
        }
    }
    let name = fields.text("plugin").unwrap_or_default();
    let path = format!("/v1/plugins/{}/run", segment(&name));
    let answer = console
        .api
        .call(
            &ctx.principal,
            Method::POST,
            &path,
            Some(json!({"event": event, "config": config})),
        )
        .await;
    if !answer.ok() {
        let errors = FieldErrors {
            by_field: Vec::new(),
            general: vec![answer.message()],
        };
        return plugins_page(&console, &ctx, &fields, None, &errors).await;
    }
    match answer.into::<RunAnswer>() {
        Ok(run) => plugins_page(&console, &ctx, &fields, Some(&run), &FieldErrors::default()).await,
        Err(page) => page,
    }
}
