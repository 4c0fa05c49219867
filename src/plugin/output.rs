//! Checking what a plugin returned. Guest output is outside input: every
//! header name and value is validated, hookd's own headers are refused, and
//! sizes are bounded before anything reaches a delivery.

use bytes::Bytes;

use super::host::bindings::hookd::plugin::types as wit;
use super::host::truncate;
use super::{Error, Verdict};
use crate::model::headers::is_protected;

/// Longest drop reason or error message kept from a plugin.
pub(crate) const MAX_MESSAGE: usize = 1024;

/// Most headers one patch may set or remove.
const MAX_HEADERS: usize = 64;

/// Longest header value a plugin may set.
const MAX_HEADER_VALUE: usize = 8 * 1024;

/// A plugin's message made safe to log and store: bounded, one line.
pub(crate) fn clean_message(text: &str) -> String {
    truncate(text, MAX_MESSAGE)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Validates a guest's verdict for plugin `plugin`.
pub(crate) fn check(plugin: &str, verdict: wit::Verdict, max_body: u64) -> Result<Verdict, Error> {
    let bad = |problem: String| Error::BadOutput {
        plugin: plugin.to_owned(),
        problem,
    };
    let patch = match verdict {
        wit::Verdict::Drop(reason) => {
            return Ok(Verdict::Drop {
                reason: clean_message(&reason),
            })
        }
        wit::Verdict::Deliver(patch) => patch,
    };
    if patch.set_headers.len() + patch.remove_headers.len() > MAX_HEADERS {
        return Err(bad(format!("the patch touches more than {MAX_HEADERS} headers")));
    }
    let mut set_headers = Vec::with_capacity(patch.set_headers.len());
    for (name, value) in patch.set_headers {
        let name = header_name(plugin, &name)?;
        if value.len() > MAX_HEADER_VALUE {
            return Err(bad(format!(
                "the value of header `{name}` is {} bytes, over {MAX_HEADER_VALUE}",
                value.len()
            )));
        }
        if http::HeaderValue::from_str(&value).is_err() {
            return Err(bad(format!(
                "the value of header `{name}` is not a valid header value (control characters or newlines)"
            )));
        }
        set_headers.push((name, value));
    }
    let mut remove_headers = Vec::with_capacity(patch.remove_headers.len());
    for name in patch.remove_headers {
        remove_headers.push(header_name(plugin, &name)?);
    }
    if let Some(body) = &patch.body {
        if body.len() as u64 > max_body {
            return Err(bad(format!(
                "the new body is {} bytes, over plugins.max_body_bytes ({max_body})",
                body.len()
            )));
        }
    }
    Ok(Verdict::Deliver {
        body: patch.body.map(Bytes::from),
        set_headers,
        remove_headers,
    })
}

/// A valid, unprotected header name, lowercased.
fn header_name(plugin: &str, name: &str) -> Result<String, Error> {
    let parsed = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| Error::BadOutput {
        plugin: plugin.to_owned(),
        problem: format!("{:?} is not a valid header name", truncate(name, 64)),
    })?;
    let lower = parsed.as_str();
    if is_protected(lower) {
        return Err(Error::ProtectedHeader {
            plugin: plugin.to_owned(),
            header: lower.to_owned(),
        });
    }
    Ok(lower.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deliver(set: &[(&str, &str)], remove: &[&str], body: Option<&[u8]>) -> wit::Verdict {
        wit::Verdict::Deliver(wit::Patch {
            body: body.map(<[u8]>::to_vec),
            set_headers: set.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            remove_headers: remove.iter().map(|n| n.to_string()).collect(),
        })
    }

    #[test]
    fn good_patches_pass_with_lowercase_names() {
        let v = check("s", deliver(&[("X-Tenant", "acme")], &["X-Old"], Some(b"{}")), 1024).unwrap();
        assert_eq!(
            v,
            Verdict::Deliver {
                body: Some(Bytes::from_static(b"{}")),
                set_headers: vec![("x-tenant".into(), "acme".into())],
                remove_headers: vec!["x-old".into()],
            }
        );
    }

    #[test]
    fn drop_reasons_are_bounded_and_one_line() {
        let long = format!("line1\nline2{}", "x".repeat(2000));
        let Verdict::Drop { reason } = check("s", wit::Verdict::Drop(long), 1).unwrap() else {
            panic!("expected a drop");
        };
        assert!(reason.starts_with("line1 line2"));
        assert_eq!(reason.len(), MAX_MESSAGE);
    }

    #[test]
    fn bad_patches_are_refused_with_the_reason() {
        let cases: &[(wit::Verdict, &str)] = &[
            (
                deliver(&[("webhook-signature", "v1,x")], &[], None),
                "change header `webhook-signature`",
            ),
            (
                deliver(&[("Content-Length", "1")], &[], None),
                "change header `content-length`",
            ),
            (deliver(&[], &["Webhook-Id"], None), "change header `webhook-id`"),
            (deliver(&[], &["HOST"], None), "change header `host`"),
            (deliver(&[("User-Agent", "x")], &[], None), "change header `user-agent`"),
            (deliver(&[("bad header", "x")], &[], None), "not a valid header name"),
            (deliver(&[("", "x")], &[], None), "not a valid header name"),
            (deliver(&[("x-a", "a\r\nb: c")], &[], None), "not a valid header value"),
            (deliver(&[("x-a", &"v".repeat(9000))], &[], None), "over 8192"),
            (deliver(&[], &[], Some(&[0; 11])), "over plugins.max_body_bytes (10)"),
        ];
        for (verdict, want) in cases {
            let err = check("crm", verdict.clone(), 10).unwrap_err().to_string();
            assert!(err.contains(want), "{verdict:?}: {err}");
            assert!(err.contains("`crm`"), "names the subscription: {err}");
        }
        let many: Vec<(String, String)> = (0..65).map(|i| (format!("x-{i}"), "v".into())).collect();
        let verdict = wit::Verdict::Deliver(wit::Patch {
            body: None,
            set_headers: many,
            remove_headers: vec![],
        });
        assert!(check("s", verdict, 10)
            .unwrap_err()
            .to_string()
            .contains("more than 64"));
    }
}
