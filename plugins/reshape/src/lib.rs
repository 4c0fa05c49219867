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
    amount: f64,
}

#[derive(Serialize)]
struct Out<'a> {
    id: &'a Option<serde_json::Value>,
    total: f64,
}

struct Reshape;

impl Plugin for Reshape {
    fn transform(event: Event, _config: &Config) -> Result<Verdict, Error> {
        let body: Body = event.parse()?;
        if body.data.amount < 10.0 {
            return Ok(Verdict::drop("amount under 10"));
        }
        Verdict::json(&Out {
            id: &body.data.coupon,
            total: body.data.amount,
        })
    }
}

export!(Reshape);
