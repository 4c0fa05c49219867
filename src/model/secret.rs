//! Secret values that never print, and the one redaction of URLs.

use std::fmt;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, Serializer};

/// A secret value: its `Debug`, `Display` and serialized forms are `[redacted]`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

use super::REDACTED;

/// `url` safe to show: its userinfo (`user:password@`) and the value of
/// every query and fragment parameter (`?token=…`) replaced by
/// `[redacted]`, keeping the scheme, host, port, path and parameter names
/// (`https://[redacted]@crm.example.com/in?token=[redacted]`). The one
/// redaction of URLs, for the config check, logs and API answers alike
/// (endpoint and Redis URLs). Text that is not a URL comes back with the
/// same rules applied as far as they go.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(at) => url.split_at(at + 3),
        None => ("", url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let mut out = String::with_capacity(url.len() + 16);
    out.push_str(scheme);
    match authority.rfind('@') {
        Some(at) => {
            out.push_str(REDACTED);
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let params_at = tail.find(['?', '#']).unwrap_or(tail.len());
    let (path, mut params) = tail.split_at(params_at);
    // A long opaque segment is a token (Slack's `/services/T…/B…/<token>`,
    // Discord's `/api/webhooks/<id>/<token>`): shown as `[redacted]`.
    for (n, segment) in path.split('/').enumerate() {
        if n > 0 {
            out.push('/');
        }
        out.push_str(if is_token(segment) { REDACTED } else { segment });
    }
    // `?a=1&b=2#c=3`: each of the query's and the fragment's parameters.
    while let Some(sep) = params.chars().next() {
        out.push(sep);
        params = &params[1..];
        let end = params.find(['&', '#', ';']).unwrap_or(params.len());
        let (param, rest) = params.split_at(end);
        match param.split_once('=') {
            Some((name, _)) => {
                out.push_str(name);
                out.push('=');
                out.push_str(REDACTED);
            }
            None if param.is_empty() => {}
            None => out.push_str(REDACTED),
        }
        params = rest;
    }
    out
}

/// Whether a URL path segment looks like a credential: 16 characters or
/// more of `A-Z a-z 0-9 - _ . ~`, with a digit or both cases (a word like
/// `notifications-endpoint` is not one).
fn is_token(segment: &str) -> bool {
    segment.len() >= 16
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
        && (segment.bytes().any(|b| b.is_ascii_digit())
            || (segment.bytes().any(|b| b.is_ascii_uppercase()) && segment.bytes().any(|b| b.is_ascii_lowercase())))
}

/// Serializes a map's keys as they are and every value as `[redacted]`
/// (a subscription's custom headers, a plugin's settings), for
/// `#[serde(serialize_with)]`.
pub fn serialize_redacted_values<S: Serializer>(map: &BTreeMap<String, String>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(map.keys().map(|k| (k, REDACTED)))
}

/// A map shown with its keys as they are and every value `[redacted]`, for
/// the `Debug` of what holds custom headers or plugin settings.
pub struct RedactedValues<'a>(pub &'a BTreeMap<String, String>);

impl fmt::Debug for RedactedValues<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.keys().map(|k| (k, REDACTED))).finish()
    }
}

/// A URL shown as [`redact_url`] shows it, for `Debug`.
pub struct RedactedUrl<'a>(pub &'a str);

impl fmt::Debug for RedactedUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_url(self.0), f)
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn urls_lose_userinfo_and_parameter_values() {
        let cases = [
            ("https://crm.example.com/webhooks", "https://crm.example.com/webhooks"),
            (
                "https://user:pass@crm.example.com:8443/in?token=abc&v=2",
                "https://[redacted]@crm.example.com:8443/in?token=[redacted]&v=[redacted]",
            ),
            ("redis://:pw@127.0.0.1:6379/0", "redis://[redacted]@127.0.0.1:6379/0"),
            (
                "rediss://default:pw@redis.internal",
                "rediss://[redacted]@redis.internal",
            ),
            ("https://h/p?abc123", "https://h/p?[redacted]"),
            (
                "https://h/p?a=1#access_token=x",
                "https://h/p?a=[redacted]#access_token=[redacted]",
            ),
            ("https://h?a=1&&b", "https://h?a=[redacted]&&[redacted]"),
            ("https://h/a@b/c", "https://h/a@b/c"),
            ("https://u@h", "https://[redacted]@h"),
            ("no url at all", "no url at all"),
            // Long opaque path segments are tokens; words and ids are not.
            (
                "https://hooks.slack.com/services/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",
                "https://hooks.slack.com/services/T0A1B2C3D/B0A1B2C3D/[redacted]",
            ),
            (
                "https://discord.com/api/webhooks/123456789012345678/aBcD-eFgH_iJkLmNoPqRsT",
                "https://discord.com/api/webhooks/[redacted]/[redacted]",
            ),
            (
                "https://crm.example.com/notifications-endpoint/in",
                "https://crm.example.com/notifications-endpoint/in",
            ),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }
}
