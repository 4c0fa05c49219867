//! The header lists every stage shares: which headers hookd owns, which
//! values are never stored, which request header values the delivery log
//! keeps. One home each, so the config's checks, the plugins' output
//! checks, the dispatcher and the delivery log cannot disagree.

/// Headers hookd sets on every delivery (or that HTTP itself owns): the
/// config file, the API and plugins may not set them, and a custom header
/// never replaces them. Every header the dispatcher sets is here (a test
/// of `dispatch` holds it to that).
pub const PROTECTED: &[&str] = &[
    "user-agent",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-digest",
    "content-length",
    "content-type",
    "host",
    "transfer-encoding",
    "connection",
];

/// Headers whose values are never stored, whatever the caller passes: the
/// signature, and credentials a subscription's custom headers or an
/// endpoint's answer may carry.
pub const ALWAYS_REDACTED: &[&str] = &[
    "webhook-signature",
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// Request headers whose values the delivery log keeps: hookd's own that
/// carry no secret. The rest of a request's headers, custom headers
/// included (they may carry credentials), are stored as [`REDACTED`].
pub const LOGGED_REQUEST: &[&str] = &[
    "content-type",
    "user-agent",
    "webhook-id",
    "webhook-timestamp",
    "content-digest",
];

/// What a redacted value shows instead.
pub const REDACTED: &str = "[redacted]";

/// Whether `name` (any case) is one of hookd's own headers ([`PROTECTED`]).
pub fn is_protected(name: &str) -> bool {
    PROTECTED.iter().any(|p| p.eq_ignore_ascii_case(name))
}

/// Checks one custom header as a subscription sets it (the config file,
/// the API): a valid name that is not hookd's own, a valid value. Returns
/// them parsed; the problem is about the header named.
pub fn custom_header(name: &str, value: &str) -> Result<(http::HeaderName, http::HeaderValue), String> {
    if is_protected(name) {
        return Err("is set by hookd and cannot be overridden".into());
    }
    let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| "is not a valid header name".to_owned())?;
    let value = http::HeaderValue::from_str(value).map_err(|_| "value is not a valid header value".to_owned())?;
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_headers_are_checked_once() {
        let (name, value) = custom_header("X-Api-Key", "k-1").unwrap();
        assert_eq!((name.as_str(), value.to_str().unwrap()), ("x-api-key", "k-1"));
        for (name, value, problem) in [
            ("Webhook-Signature", "x", "is set by hookd"),
            ("content-type", "x", "is set by hookd"),
            ("User-Agent", "x", "is set by hookd"),
            ("x a", "x", "not a valid header name"),
            ("x-a", "a\nb", "not a valid header value"),
        ] {
            let err = custom_header(name, value).unwrap_err();
            assert!(err.contains(problem), "{name}: {err}");
        }
    }
}
