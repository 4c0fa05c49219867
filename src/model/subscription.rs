//! What identifies a subscription and limits its requests.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A subscription's unique name: 1 to 64 of `a-z A-Z 0-9 - _ .`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(transparent)]
pub struct SubscriptionName(String);

impl SubscriptionName {
    /// Checks and wraps a name.
    pub fn parse(name: &str) -> Result<SubscriptionName, String> {
        if name.is_empty() || name.len() > 64 {
            return Err("must be 1 to 64 characters".into());
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return Err(format!("`{name}` may only contain letters, digits, `-`, `_` and `.`"));
        }
        Ok(SubscriptionName(name.to_owned()))
    }

    /// The name of `tenant`'s ingest rate bucket in the queue backend:
    /// not a subscription's (`@` and `/` are never in one), so it never
    /// shares a subscription's bucket.
    pub fn tenant_bucket(tenant: &super::TenantId) -> SubscriptionName {
        SubscriptionName(format!("@tenant/{tenant}"))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SubscriptionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A subscription's request rate limit (a token bucket).
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained requests per second; fractions allowed (`0.5`: one every
    /// two seconds).
    pub per_second: f64,
    /// Requests that may go at once after a quiet spell; at least 1.
    /// Default: `per_second` rounded up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl RateLimit {
    /// The burst in force: as configured, or `per_second` rounded up.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or_else(|| (self.per_second.ceil() as u32).max(1))
    }
}
