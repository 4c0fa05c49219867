//! The overview: deliveries per minute by outcome and attempt latency
//! over the last hour or day (from `GET /v1/stats`), failing
//! subscriptions first, and for operators the queue's depth and each
//! tenant's volume. Charts are SVG drawn here, with the figures beside
//! them in a table, so they read without colour and without script.

use axum::extract::{Query, State};
use axum::http::Method;
use axum::response::Response;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::Value;

use super::{query, segment};
use crate::console::view;
use crate::console::{render, Console, Ctx};

#[derive(Deserialize, Default)]
pub(super) struct Window {
    #[serde(default)]
    window: String,
}

/// One bar of a chart: minutes summed.
#[derive(Clone, Copy, Default)]
struct Bar {
    succeeded: u64,
    failed: u64,
    p50: u64,
    p99: u64,
}

/// The minutes of `stats` grouped by `per` into bars (sums of counts, the
/// worst latency of the group).
fn bars(stats: &Value, per: usize) -> Vec<Bar> {
    let minutes = stats["minutes"].as_array().cloned().unwrap_or_default();
    minutes
        .chunks(per.max(1))
        .map(|group| {
            group.iter().fold(Bar::default(), |b, m| Bar {
                succeeded: b.succeeded + m["succeeded"].as_u64().unwrap_or(0),
                failed: b.failed + m["failed"].as_u64().unwrap_or(0),
                p50: b.p50.max(m["p50_ms"].as_u64().unwrap_or(0)),
                p99: b.p99.max(m["p99_ms"].as_u64().unwrap_or(0)),
            })
        })
        .collect()
}

const W: f64 = 600.0;
const H: f64 = 120.0;

/// Stacked bars: succeeded solid, failed hatched on top.
fn volume_chart(bars: &[Bar], label: &str) -> Markup {
    let top = bars.iter().map(|b| b.succeeded + b.failed).max().unwrap_or(0).max(1) as f64;
    let step = W / bars.len().max(1) as f64;
    html! {
        svg.chart viewBox=(format!("0 0 {W} {H}")) role="img" aria-label=(label) preserveAspectRatio="none" {
            defs { pattern id="hatch" width="4" height="4" patternUnits="userSpaceOnUse" {
                path d="M0,4 L4,0" stroke="currentColor" stroke-width="1";
            } }
            @for (i, b) in bars.iter().enumerate() {
                @let x = i as f64 * step;
                @let ok = b.succeeded as f64 / top * H;
                @let bad = b.failed as f64 / top * H;
                rect.ok x=(x) y=(H - ok) width=(step * 0.8) height=(ok) fill="currentColor" {}
                rect.failed x=(x) y=(H - ok - bad) width=(step * 0.8) height=(bad) fill="url(#hatch)" stroke="currentColor" stroke-width="0.5" {}
            }
        }
    }
}

/// p50 and p99 as two lines, p99 dashed.
fn latency_chart(bars: &[Bar], label: &str) -> Markup {
    let top = bars.iter().map(|b| b.p99).max().unwrap_or(0).max(1) as f64;
    let step = W / bars.len().max(1) as f64;
    let line = |pick: fn(&Bar) -> u64| -> String {
        bars.iter()
            .enumerate()
            .map(|(i, b)| {
                format!(
                    "{:.1},{:.1}",
                    i as f64 * step + step / 2.0,
                    H - pick(b) as f64 / top * H
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    html! {
        svg.chart viewBox=(format!("0 0 {W} {H}")) role="img" aria-label=(label) preserveAspectRatio="none" {
            polyline points=(line(|b| b.p50)) fill="none" stroke="currentColor" stroke-width="1.5" {}
            polyline points=(line(|b| b.p99)) fill="none" stroke="currentColor" stroke-width="1.5" stroke-dasharray="4 3" {}
        }
    }
}

pub(super) async fn show(State(console): State<Console>, ctx: Ctx, Query(w): Query<Window>) -> Response {
    let window = if w.window == "day" { "day" } else { "hour" };
    let answer = console
        .api
        .call(
            &ctx.principal,
            Method::GET,
            &format!("/v1/stats{}", query(&[("window", window)])),
            None,
        )
        .await;
    if !answer.ok() {
        return render(&ctx, "Overview", html! { p.error role="alert" { (answer.message()) } });
    }
    let stats = answer.body;
    let per = if window == "day" { 30 } else { 1 };
    let bars = bars(&stats, per);
    let totals = &stats["totals"];
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let failing = stats["failing"].as_array().cloned().unwrap_or_default();
    let body = html! {
        nav.tabs aria-label="window" {
            a href="/console?window=hour" aria-current=[(window == "hour").then_some("page")] { "Last hour" }
            a href="/console?window=day" aria-current=[(window == "day").then_some("page")] { "Last day" }
        }
        section.card {
            h2 { "Attempts per " (if per == 1 { "minute".to_owned() } else { format!("{per} minutes") }) }
            (volume_chart(&bars, "attempts by outcome: succeeded solid, failed hatched"))
            p.legend { "■ succeeded  ▨ failed" }
            table.totals { tbody {
                tr { th { "Succeeded" } td.num id="total-succeeded" { (n(&totals["succeeded"])) } }
                tr { th { "Failed" } td.num id="total-failed" { (n(&totals["failed"])) } }
            } }
        }
        section.card {
            h2 { "Attempt latency" }
            (latency_chart(&bars, "attempt latency: p50 solid, p99 dashed"))
            p.legend { "— p50  - - p99" }
            table.totals { tbody {
                tr { th { "p50" } td.num { (n(&totals["p50_ms"])) " ms" } }
                tr { th { "p99" } td.num { (n(&totals["p99_ms"])) " ms" } }
            } }
        }
        section.card {
            h2 { "Failing subscriptions" }
            @if failing.is_empty() { p { "✓ None: every subscription's last attempt succeeded." } }
            @else { div.scroll { table {
                thead { tr { th { "Subscription" } @if ctx.operator() { th { "Tenant" } } th { "Status" } th { "Failures in a row" } th { "Failing since" } } }
                tbody { @for s in &failing { tr {
                    td { a href=(format!("/console/subscriptions/{}", segment(s["id"].as_str().unwrap_or("")))) { (s["name"].as_str().or(s["id"].as_str()).unwrap_or("")) } }
                    @if ctx.operator() { td { (s["tenant"].as_str().unwrap_or("operator")) } }
                    td { (view::state(s["status"].as_str().unwrap_or(""))) }
                    td.num { (n(&s["consecutive_failures"])) }
                    td { (view::when(s["failing_since"].as_str())) }
                } } }
            } } }
        }
        @if ctx.operator() {
            @let queue = &stats["queue"];
            section.card {
                h2 { "Queue" }
                table.totals id="queue-depth" { tbody {
                    tr { th { "Due" } td.num { (n(&queue["due"])) } }
                    tr { th { "Scheduled" } td.num { (n(&queue["scheduled"])) } }
                    tr { th { "Parked" } td.num { (n(&queue["parked"])) } }
                    tr { th { "Dead" } td.num { (n(&queue["dead"])) } }
                } }
            }
            @let tenants = stats["tenants"].as_array().cloned().unwrap_or_default();
            section.card {
                h2 { "Volume by tenant" }
                @if tenants.is_empty() { p { "No tenant's attempts in this window." } }
                @else { table.totals { tbody { @for t in &tenants { tr {
                    th { (t["tenant"].as_str().unwrap_or("")) }
                    td.num { (n(&t["attempts"])) }
                } } } } }
            }
        }
    };
    render(&ctx, "Overview", body)
}
