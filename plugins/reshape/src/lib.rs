//! reshape: `{"id": data.coupon, "total": data.amount}` for events whose
//! `data.amount` is at least 10, dropped otherwise: the jq plugin's example
//! filter written in plain Rust, to compare the two in benchmarks.

use hookd_plugin_sdk::{export, Config, Error, Event, Plugin, Verdict};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Body {
    data: Data,
}

#[derive(Deserialize)]
struct Data {
    coupon: Option<serde_json::Value>,
    /// Kept as the producer wrote it (`12` stays `12`, not `12.0`).
    amount: serde_json::Number,
}

#[derive(Serialize)]
struct Out<'a> {
    id: &'a Option<serde_json::Value>,
    total: &'a serde_json::Number,
}

struct Reshape;

impl Plugin for Reshape {
    fn transform(event: Event, _config: &Config) -> Result<Verdict, Error> {
        let body: Body = event.parse()?;
        if body.data.amount.as_f64().is_none_or(|amount| amount < 10.0) {
            return Ok(Verdict::drop("amount under 10"));
        }
        Verdict::json(&Out {
            id: &body.data.coupon,
            total: &body.data.amount,
        })
    }
}

export!(Reshape);
