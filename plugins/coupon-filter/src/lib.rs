//! coupon-filter: drops `coupon.redeemed` events whose `data.amount` is
//! under `min_amount`; every other event passes unchanged.
//!
//! Config: `min_amount` (a number, default 0).

use hookd_plugin_sdk::{export, Config, Error, Event, Plugin, Verdict};

/// The event type this plugin filters.
const REDEEMED: &str = "coupon.redeemed";

struct CouponFilter;

impl Plugin for CouponFilter {
    fn transform(event: Event, config: &Config) -> Result<Verdict, Error> {
        let min_amount: f64 = config.parse_or("min_amount", 0.0)?;
        if event.event_type != REDEEMED {
            return Ok(Verdict::unchanged());
        }
        let body = event.json()?;
        let amount = body["data"]["amount"]
            .as_f64()
            .ok_or_else(|| Error::new("coupon.redeemed event has no numeric `data.amount`"))?;
        if amount < min_amount {
            Ok(Verdict::drop(format!(
                "amount {amount} is under min_amount {min_amount}"
            )))
        } else {
            Ok(Verdict::unchanged())
        }
    }
}

export!(CouponFilter);
