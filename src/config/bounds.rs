//! The bounds of every subscription field a tenant, or the operator's file,
//! can set. A subscription made through the API is checked against the
//! bounds of its tenant's plan ([`Bounds::for_plan`]: the process's bounds,
//! each lowered by the plan where it says so); a TOML one against the
//! process's ([`Bounds::of`]). A value beyond a bound is refused with the
//! field, the bound and where the bound comes from, so a stranger can
//! neither store a number that breaks a process nor learn less than what
//! to send instead.

use std::time::Duration;

use super::{DeliveryConfig, PlanConfig};
use crate::deliver::NetworkPolicy;

/// Longest subscription `name` (API), in bytes.
pub const MAX_NAME: usize = 200;
/// Longest subscription `description`, in bytes.
pub const MAX_DESCRIPTION: usize = 2000;
/// Longest endpoint `url`, in bytes.
pub const MAX_URL: usize = 2048;
/// Most custom headers on one subscription.
pub const MAX_HEADERS: usize = 32;
/// Most bytes of custom headers (names and values together) on one
/// subscription.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Most event patterns on one subscription.
pub const MAX_EVENTS: usize = 256;
/// Most settings in a subscription's plugin config.
pub const MAX_PLUGIN_SETTINGS: usize = 64;
/// Most bytes of a subscription's plugin config (keys and values together).
pub const MAX_PLUGIN_CONFIG_BYTES: usize = 16 * 1024;
/// Highest `rate_limit.per_second`.
pub const MAX_RATE: f64 = 1_000_000.0;
/// Highest `rate_limit.burst`.
pub const MAX_BURST: u32 = 100_000;
/// Highest `plans.X.max_pending`.
pub const MAX_PENDING: u64 = 1_000_000_000;
/// Longest reason given to `POST /v1/subscriptions/{id}/disable`, in bytes.
pub const MAX_REASON: usize = 500;
/// Highest `delivery.max_in_flight` a process may be given.
pub const MAX_PROCESS_IN_FLIGHT: usize = 100_000;
/// Highest `delivery.max_retries_limit`.
pub const MAX_RETRIES_LIMIT: u32 = 1000;
/// Longest `delivery.timeout_max`.
pub const MAX_TIMEOUT_LIMIT: Duration = Duration::from_secs(3600);

/// One bound and where it comes from, for the message refusing a value
/// beyond it (`delivery.max_in_flight`, `plan `free`: max_in_flight`).
#[derive(Clone, Debug, PartialEq)]
pub struct Bound<T> {
    /// The highest value allowed.
    pub value: T,
    /// The key that sets it.
    pub from: String,
}

impl<T: PartialOrd + Copy> Bound<T> {
    /// The bound lowered to `plan`'s value, if the plan sets a lower one.
    fn lowered(self, plan: &str, value: Option<T>, key: &str) -> Bound<T> {
        match value {
            Some(v) if v < self.value => Bound {
                value: v,
                from: format!("plan `{plan}`: {key}"),
            },
            _ => self,
        }
    }
}

fn fixed<T>(value: T, what: &str) -> Bound<T> {
    Bound {
        value,
        from: format!("hookd's bound on {what}"),
    }
}

/// Every bound a subscription's fields are held to.
#[derive(Clone, Debug, PartialEq)]
pub struct Bounds {
    /// `max_in_flight`.
    pub in_flight: Bound<usize>,
    /// `max_retries`.
    pub retries: Bound<u32>,
    /// `timeout`.
    pub timeout: Bound<Duration>,
    /// How many custom `headers`.
    pub headers: Bound<usize>,
    /// Bytes of custom `headers`, names and values together.
    pub header_bytes: Bound<usize>,
    /// How many `events` patterns.
    pub events: Bound<usize>,
    /// `rate_limit.per_second`.
    pub per_second: Bound<f64>,
    /// `rate_limit.burst`.
    pub burst: Bound<u32>,
    /// Which endpoint URLs are accepted: `[delivery]`'s for the operator's
    /// subscriptions, the plan's alone for a tenant's.
    pub network: NetworkPolicy,
}

impl Bounds {
    /// The process's bounds, from `[delivery]` and hookd's own.
    pub fn of(delivery: &DeliveryConfig) -> Bounds {
        Bounds {
            in_flight: Bound {
                value: delivery.max_in_flight,
                from: "delivery.max_in_flight".into(),
            },
            retries: Bound {
                value: delivery.max_retries_limit,
                from: "delivery.max_retries_limit".into(),
            },
            timeout: Bound {
                value: delivery.timeout_max,
                from: "delivery.timeout_max".into(),
            },
            headers: fixed(MAX_HEADERS, "custom headers"),
            header_bytes: fixed(MAX_HEADER_BYTES, "custom header bytes"),
            events: fixed(MAX_EVENTS, "event patterns"),
            per_second: fixed(MAX_RATE, "rate_limit.per_second"),
            burst: fixed(MAX_BURST, "rate_limit.burst"),
            network: NetworkPolicy::operator(delivery),
        }
    }

    /// The bounds of a subscription of a tenant on plan `name`: the
    /// process's, each lowered where the plan sets a lower one, and the
    /// plan's network policy (never the operator's; with no plan, nothing
    /// beyond public https).
    pub fn for_plan(delivery: &DeliveryConfig, plan: Option<(&str, &PlanConfig)>) -> Bounds {
        let b = Bounds::of(delivery);
        let Some((name, p)) = plan else {
            return Bounds {
                network: NetworkPolicy::of_plan(super::DEFAULT_PLAN, &PlanConfig::default()),
                ..b
            };
        };
        Bounds {
            network: NetworkPolicy::of_plan(name, p),
            in_flight: b.in_flight.lowered(name, p.max_in_flight, "max_in_flight"),
            retries: b.retries.lowered(name, p.max_retries, "max_retries"),
            timeout: b.timeout.lowered(name, p.max_timeout, "max_timeout"),
            headers: b.headers.lowered(name, p.max_headers, "max_headers"),
            header_bytes: b.header_bytes,
            events: b.events.lowered(name, p.max_events, "max_events"),
            per_second: b.per_second.lowered(name, p.max_rate_limit, "max_rate_limit"),
            burst: b.burst.lowered(name, p.max_burst, "max_burst"),
        }
    }
}

/// Why `value` of `field` is refused: it is above `bound`.
pub fn above<T: std::fmt::Display>(value: impl std::fmt::Display, bound: &Bound<T>) -> String {
    format!("{value} is above the bound of {} ({})", bound.value, bound.from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_lowers_a_bound_and_never_raises_one() {
        let config = crate::config::Config::from_toml("").unwrap();
        let plan = PlanConfig {
            max_in_flight: Some(4),
            max_retries: Some(1_000_000),
            max_burst: Some(10),
            ..PlanConfig::default()
        };
        let b = Bounds::for_plan(&config.delivery, Some(("free", &plan)));
        assert_eq!(b.in_flight.value, 4);
        assert_eq!(b.in_flight.from, "plan `free`: max_in_flight");
        assert_eq!(b.retries.value, config.delivery.max_retries_limit);
        assert_eq!(b.retries.from, "delivery.max_retries_limit");
        assert_eq!(b.burst.value, 10);
        assert_eq!(b.events.value, MAX_EVENTS);
        assert_eq!(b.network.from, "plans.free");
        assert!(!b.network.allow_http && !b.network.reveal_addresses);
        let none = Bounds::for_plan(&config.delivery, None);
        assert_eq!(
            (none.in_flight, none.events),
            (
                Bounds::of(&config.delivery).in_flight,
                Bounds::of(&config.delivery).events
            )
        );
        assert_eq!(none.network.from, "plans.default");
        assert_eq!(
            above(513, &Bounds::of(&config.delivery).in_flight),
            "513 is above the bound of 512 (delivery.max_in_flight)"
        );
    }
}
