//! Tenants: the platform's customers, each with its own subscriptions.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A tenant's id: 1 to 63 of `a-z 0-9 _ -`, starting with a letter or
/// digit (`acme`, `shop-42`). Chosen by the platform, stable, and part of
/// every key of the tenant's objects.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TenantId {
    /// Checks a tenant id that came from outside.
    pub fn parse(text: &str) -> Result<TenantId, String> {
        let mut bytes = text.bytes();
        let first_ok = bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let rest_ok = bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if first_ok && rest_ok && text.len() <= 63 {
            Ok(TenantId(text.to_owned()))
        } else {
            Err(format!(
                "`{text}` is not a tenant id: use 1 to 63 of a-z, 0-9, `_` and `-`, starting with a letter or digit"
            ))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantId {
    type Error = String;
    fn try_from(text: String) -> Result<TenantId, String> {
        TenantId::parse(&text)
    }
}

impl From<TenantId> for String {
    fn from(id: TenantId) -> String {
        id.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_are_checked_everywhere() {
        for good in ["acme", "a", "shop-42", "0x_y", &"a".repeat(63)] {
            assert_eq!(TenantId::parse(good).unwrap().as_str(), good);
        }
        for bad in ["", "Acme", "-acme", "_a", "a b", "a.b", &"a".repeat(64)] {
            assert!(TenantId::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let parsed: TenantId = serde_json::from_str("\"acme\"").unwrap();
        assert_eq!(parsed.as_str(), "acme");
        assert!(
            serde_json::from_str::<TenantId>("\"ACME\"").is_err(),
            "serde runs the same check"
        );
    }
}
