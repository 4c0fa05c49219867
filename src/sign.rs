//! Signing and verification of webhooks, per Standard Webhooks.
//!
//! Every delivery carries `webhook-id`, `webhook-timestamp` and
//! `webhook-signature`, where the signature is
//! `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, one per active
//! secret, space-separated (so a receiver can rotate keys). hookd also sends
//! `content-digest` (RFC 9530, `sha-256=:<base64>:`).
//!
//! The sending side is [`Signer`], built once per subscription; the
//! receiving side is [`Verifier`] (or the one-call [`verify`]), which any
//! Rust receiver can use. Receivers in other languages can use any
//! Standard Webhooks library: the wire format is the same.

use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{decode_secret, Secret};

/// Header carrying the delivery's id, stable across retries: the receiver's
/// deduplication key.
pub const HEADER_WEBHOOK_ID: &str = "webhook-id";
/// Header carrying the Unix time, in seconds, of this attempt.
pub const HEADER_WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
/// Header carrying the space-separated `v1,<base64>` signatures.
pub const HEADER_WEBHOOK_SIGNATURE: &str = "webhook-signature";
/// Header carrying the RFC 9530 digest of the body.
pub const HEADER_CONTENT_DIGEST: &str = "content-digest";

/// Default window within which a receiver accepts a timestamp, both in the
/// past and in the future (clock skew).
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// Length of one signature in the header: `v1,` and 44 base64 characters.
const SIGNATURE_LEN: usize = 3 + 44;

type HmacSha256 = Hmac<Sha256>;

/// A secret that cannot be used to sign or verify.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// No secret was given.
    #[error("no signing secret given: configure at least one whsec_ secret")]
    Empty,
    /// A secret is not `whsec_` followed by 24 to 64 bytes of base64.
    #[error("secret #{index} is unusable: it {problem}")]
    Invalid {
        /// Position of the secret in the list, from 0.
        index: usize,
        /// What is wrong with it.
        problem: String,
    },
}

/// Keys the HMAC state for each secret once, so signing or verifying only
/// clones the keyed state.
fn keyed(secrets: impl IntoIterator<Item = impl AsRef<str>>) -> Result<Vec<HmacSha256>, SecretError> {
    let keys = secrets
        .into_iter()
        .enumerate()
        .map(|(index, secret)| {
            let bytes = decode_secret(secret.as_ref()).map_err(|problem| SecretError::Invalid {
                index,
                problem: problem.trim_start_matches("must ").to_string(),
            })?;
            HmacSha256::new_from_slice(&bytes).map_err(|e| SecretError::Invalid {
                index,
                problem: e.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        return Err(SecretError::Empty);
    }
    Ok(keys)
}

/// Writes `n` in decimal into `buf`, returning the digits (no allocation).
fn decimal(n: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut rest = n.unsigned_abs();
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    &buf[at..]
}

/// The HMAC-SHA256 of `{id}.{timestamp}.{body}` under one keyed state, fed
/// piece by piece rather than concatenated.
fn mac(key: &HmacSha256, id: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
    let mut digits = [0u8; 20];
    let mut mac = key.clone();
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(decimal(timestamp, &mut digits));
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// Signs deliveries with a subscription's secrets; build one per
/// subscription and reuse it.
#[derive(Clone)]
pub struct Signer {
    /// One HMAC state per secret, already keyed, in configuration order.
    keys: Vec<HmacSha256>,
}

impl Signer {
    /// Prepares a signer from `whsec_` secrets (at least one).
    pub fn new(secrets: &[Secret]) -> Result<Signer, SecretError> {
        Ok(Signer {
            keys: keyed(secrets.iter().map(Secret::expose))?,
        })
    }

    /// The `webhook-signature` header value for one attempt:
    /// `v1,<base64>` per secret, space-separated.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut out = String::with_capacity(self.keys.len() * (SIGNATURE_LEN + 1));
        for (n, key) in self.keys.iter().enumerate() {
            if n > 0 {
                out.push(' ');
            }
            out.push_str("v1,");
            BASE64.encode_string(mac(key, id, timestamp, body), &mut out);
        }
        out
    }

    /// How many secrets sign (one signature each).
    pub fn secrets(&self) -> usize {
        self.keys.len()
    }
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("secrets", &self.keys.len())
            .field("keys", &"[redacted]")
            .finish()
    }
}

/// The RFC 9530 `content-digest` header value of `body`:
/// `sha-256=:<base64>:`.
pub fn content_digest(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let mut out = String::with_capacity(10 + 44 + 1);
    out.push_str("sha-256=:");
    BASE64.encode_string(digest, &mut out);
    out.push(':');
    out
}

/// Why a received webhook was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A required header is absent.
    #[error("missing `{0}` header: is this request from a Standard Webhooks sender?")]
    MissingHeader(&'static str),
    /// A header is present but not readable text.
    #[error("`{0}` header is not valid ASCII text")]
    InvalidHeader(&'static str),
    /// `webhook-timestamp` is not an integer number of Unix seconds.
    #[error("`webhook-timestamp` is not a Unix time in seconds")]
    BadTimestamp,
    /// The timestamp is further in the past than the tolerance: a replay,
    /// or a receiver clock that is wrong.
    #[error("timestamp is {}s in the past, beyond the tolerance: replayed request or wrong clock", skew.as_secs())]
    TooOld {
        /// How far in the past.
        skew: Duration,
    },
    /// The timestamp is further in the future than the tolerance.
    #[error("timestamp is {}s in the future, beyond the tolerance: check both clocks", skew.as_secs())]
    TooNew {
        /// How far in the future.
        skew: Duration,
    },
    /// No `v1,` signature matches any secret: wrong secret, or the id,
    /// timestamp or body was altered.
    #[error("no signature matches: wrong secret, or the id, timestamp or body was altered")]
    NoMatchingSignature,
    /// `content-digest` does not match the body.
    #[error("`content-digest` does not match the body: the body was altered in transit")]
    DigestMismatch,
    /// The secret given to [`verify`] is not usable.
    #[error("{0}")]
    Secret(String),
}

/// Checks webhooks received from hookd (or any Standard Webhooks sender).
#[derive(Clone)]
pub struct Verifier {
    /// One keyed HMAC state per accepted secret.
    keys: Vec<HmacSha256>,
    /// Largest accepted distance between the timestamp and now.
    tolerance: Duration,
}

impl Verifier {
    /// A verifier accepting signatures by any of `secrets` (`whsec_…`),
    /// with the default tolerance of 5 minutes.
    pub fn new<S: AsRef<str>>(secrets: &[S]) -> Result<Verifier, SecretError> {
        Ok(Verifier {
            keys: keyed(secrets)?,
            tolerance: DEFAULT_TOLERANCE,
        })
    }

    /// The same verifier with another timestamp tolerance.
    pub fn with_tolerance(mut self, tolerance: Duration) -> Verifier {
        self.tolerance = tolerance;
        self
    }

    /// Verifies a request's headers and body against the current time.
    pub fn verify(&self, headers: &http::HeaderMap, body: &[u8]) -> Result<(), VerifyError> {
        self.verify_at(headers, body, chrono::Utc::now().timestamp())
    }

    /// Verifies a request as if the time were `now_unix` (seconds).
    pub fn verify_at(&self, headers: &http::HeaderMap, body: &[u8], now_unix: i64) -> Result<(), VerifyError> {
        let id = header(headers, HEADER_WEBHOOK_ID)?;
        let timestamp = header(headers, HEADER_WEBHOOK_TIMESTAMP)?;
        let signatures = header(headers, HEADER_WEBHOOK_SIGNATURE)?;

        let timestamp: i64 = timestamp.trim().parse().map_err(|_| VerifyError::BadTimestamp)?;
        let skew = now_unix.saturating_sub(timestamp);
        let tolerance = i64::try_from(self.tolerance.as_secs()).unwrap_or(i64::MAX);
        if skew > tolerance {
            return Err(VerifyError::TooOld {
                skew: Duration::from_secs(skew.unsigned_abs()),
            });
        }
        if skew < -tolerance {
            return Err(VerifyError::TooNew {
                skew: Duration::from_secs(skew.unsigned_abs()),
            });
        }

        let expected: Vec<[u8; 32]> = self.keys.iter().map(|k| mac(k, id, timestamp, body)).collect();
        let mut matched = subtle::Choice::from(0u8);
        for candidate in signatures.split_ascii_whitespace() {
            let Some(encoded) = candidate.strip_prefix("v1,") else {
                continue; // other schemes (v1a, …) are not ours to check
            };
            let mut given = [0u8; 32];
            match BASE64.decode_slice(encoded, &mut given) {
                Ok(32) => {}
                _ => continue,
            }
            for mac in &expected {
                matched |= mac.ct_eq(&given);
            }
        }
        if !bool::from(matched) {
            return Err(VerifyError::NoMatchingSignature);
        }

        if let Some(digest) = headers.get(HEADER_CONTENT_DIGEST) {
            let digest = digest
                .to_str()
                .map_err(|_| VerifyError::InvalidHeader(HEADER_CONTENT_DIGEST))?;
            check_digest(digest, body)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("secrets", &self.keys.len())
            .field("keys", &"[redacted]")
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

/// Verifies a received webhook with one `whsec_` secret and the default
/// tolerance. Build a [`Verifier`] once instead when verifying many.
pub fn verify(secret: &str, headers: &http::HeaderMap, body: &[u8]) -> Result<(), VerifyError> {
    Verifier::new(&[secret])
        .map_err(|e| VerifyError::Secret(e.to_string()))?
        .verify(headers, body)
}

fn header<'h>(headers: &'h http::HeaderMap, name: &'static str) -> Result<&'h str, VerifyError> {
    headers
        .get(name)
        .ok_or(VerifyError::MissingHeader(name))?
        .to_str()
        .map_err(|_| VerifyError::InvalidHeader(name))
}

/// Checks the `sha-256` member of an RFC 9530 `content-digest` dictionary.
/// Members with other algorithms are skipped: the signature, not the
/// digest, is what authenticates the body.
fn check_digest(header: &str, body: &[u8]) -> Result<(), VerifyError> {
    for member in header.split(',') {
        let Some((algorithm, value)) = member.trim().split_once('=') else {
            return Err(VerifyError::DigestMismatch);
        };
        if !algorithm.trim().eq_ignore_ascii_case("sha-256") {
            continue;
        }
        let value = value.trim();
        let encoded = value
            .strip_prefix(':')
            .and_then(|v| v.strip_suffix(':'))
            .ok_or(VerifyError::DigestMismatch)?;
        let mut given = [0u8; 32];
        match BASE64.decode_slice(encoded, &mut given) {
            Ok(32) => {}
            _ => return Err(VerifyError::DigestMismatch),
        }
        let actual: [u8; 32] = Sha256::digest(body).into();
        if !bool::from(actual.ct_eq(&given)) {
            return Err(VerifyError::DigestMismatch);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks published test vector.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const EXPECTED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    const OTHER: &str = "whsec_dGhpcyBpcyBhIHNlY29uZCBzZWNyZXQga2V5IQ==";

    fn signer(secrets: &[&str]) -> Signer {
        let secrets: Vec<Secret> = secrets.iter().map(|s| Secret::new(*s)).collect();
        Signer::new(&secrets).unwrap()
    }

    fn headers(id: &str, ts: i64, signature: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(HEADER_WEBHOOK_ID, id.parse().unwrap());
        h.insert(HEADER_WEBHOOK_TIMESTAMP, ts.to_string().parse().unwrap());
        h.insert(HEADER_WEBHOOK_SIGNATURE, signature.parse().unwrap());
        h
    }

    fn verifier(secrets: &[&str]) -> Verifier {
        Verifier::new(secrets).unwrap()
    }

    #[test]
    fn standard_webhooks_vector() {
        assert_eq!(signer(&[SECRET]).sign(ID, TS, BODY), EXPECTED);
        let h = headers(ID, TS, EXPECTED);
        assert_eq!(verifier(&[SECRET]).verify_at(&h, BODY, TS), Ok(()));
    }

    #[test]
    fn decimal_formats_every_width() {
        for n in [0, 7, 10, 1614265330, -1, -42, i64::MAX, i64::MIN] {
            let mut buf = [0u8; 20];
            assert_eq!(decimal(n, &mut buf), n.to_string().as_bytes());
        }
    }

    #[test]
    fn round_trip() {
        let body = br#"{"type":"coupon.redeemed","timestamp":"2024-01-01T00:00:00Z","data":{}}"#;
        let sig = signer(&[OTHER]).sign("evt_1", 1_700_000_000, body);
        let mut h = headers("evt_1", 1_700_000_000, &sig);
        h.insert(HEADER_CONTENT_DIGEST, content_digest(body).parse().unwrap());
        assert_eq!(verifier(&[OTHER]).verify_at(&h, body, 1_700_000_010), Ok(()));
        assert_eq!(
            verifier(&[SECRET]).verify_at(&h, body, 1_700_000_010),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn two_secrets_give_two_signatures_and_either_verifies() {
        let sig = signer(&[SECRET, OTHER]).sign(ID, TS, BODY);
        let parts: Vec<&str> = sig.split(' ').collect();
        assert_eq!(parts.len(), 2, "{sig}");
        assert_eq!(parts[0], EXPECTED);
        assert_eq!(parts[1], signer(&[OTHER]).sign(ID, TS, BODY));
        let h = headers(ID, TS, &sig);
        assert_eq!(verifier(&[SECRET]).verify_at(&h, BODY, TS), Ok(()));
        assert_eq!(verifier(&[OTHER]).verify_at(&h, BODY, TS), Ok(()));
        // A receiver mid-rotation holding both also accepts a single one.
        let h = headers(ID, TS, EXPECTED);
        assert_eq!(verifier(&[OTHER, SECRET]).verify_at(&h, BODY, TS), Ok(()));
    }

    #[test]
    fn tampering_is_detected() {
        let v = verifier(&[SECRET]);
        let cases = [
            ("body", headers(ID, TS, EXPECTED), &br#"{"test": 2432232315}"#[..]),
            ("id", headers("msg_other", TS, EXPECTED), BODY),
            ("timestamp", headers(ID, TS + 1, EXPECTED), BODY),
            (
                "signature",
                headers(ID, TS, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="),
                BODY,
            ),
            ("scheme", headers(ID, TS, &EXPECTED.replace("v1,", "v2,")), BODY),
            ("garbage", headers(ID, TS, "v1,not-base64 v1,"), BODY),
        ];
        for (what, h, body) in cases {
            assert_eq!(
                v.verify_at(&h, body, TS),
                Err(VerifyError::NoMatchingSignature),
                "{what}"
            );
        }
    }

    #[test]
    fn timestamps_outside_the_tolerance_fail() {
        let v = verifier(&[SECRET]);
        let h = headers(ID, TS, EXPECTED);
        assert_eq!(v.verify_at(&h, BODY, TS + 300), Ok(()));
        assert_eq!(v.verify_at(&h, BODY, TS - 300), Ok(()));
        assert_eq!(
            v.verify_at(&h, BODY, TS + 301),
            Err(VerifyError::TooOld {
                skew: Duration::from_secs(301)
            })
        );
        assert_eq!(
            v.verify_at(&h, BODY, TS - 3600),
            Err(VerifyError::TooNew {
                skew: Duration::from_secs(3600)
            })
        );
        let strict = verifier(&[SECRET]).with_tolerance(Duration::from_secs(10));
        assert!(matches!(
            strict.verify_at(&h, BODY, TS + 11),
            Err(VerifyError::TooOld { .. })
        ));
        // The real clock is far from 2021.
        assert!(matches!(v.verify(&h, BODY), Err(VerifyError::TooOld { .. })));
    }

    #[test]
    fn missing_and_malformed_headers_are_named() {
        let v = verifier(&[SECRET]);
        for name in [HEADER_WEBHOOK_ID, HEADER_WEBHOOK_TIMESTAMP, HEADER_WEBHOOK_SIGNATURE] {
            let mut h = headers(ID, TS, EXPECTED);
            h.remove(name);
            assert_eq!(v.verify_at(&h, BODY, TS), Err(VerifyError::MissingHeader(name)));
        }
        let mut h = headers(ID, TS, EXPECTED);
        h.insert(HEADER_WEBHOOK_TIMESTAMP, "yesterday".parse().unwrap());
        assert_eq!(v.verify_at(&h, BODY, TS), Err(VerifyError::BadTimestamp));
    }

    #[test]
    fn content_digest_known_value() {
        // printf '{"test": 2432232314}' | openssl dgst -sha256 -binary | base64
        assert_eq!(
            content_digest(BODY),
            "sha-256=:roWJMfZ4h+gVDW+Wyf4DBiwd82tEZMTdyOACwITV0Zg=:"
        );
        // printf '' | openssl dgst -sha256 -binary | base64
        assert_eq!(
            content_digest(b""),
            "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"
        );
    }

    #[test]
    fn content_digest_must_match_when_present() {
        let v = verifier(&[SECRET]);
        let mut h = headers(ID, TS, EXPECTED);
        h.insert(HEADER_CONTENT_DIGEST, content_digest(BODY).parse().unwrap());
        assert_eq!(v.verify_at(&h, BODY, TS), Ok(()));
        h.insert(HEADER_CONTENT_DIGEST, content_digest(b"other").parse().unwrap());
        assert_eq!(v.verify_at(&h, BODY, TS), Err(VerifyError::DigestMismatch));
        h.insert(HEADER_CONTENT_DIGEST, "sha-256=:nope:".parse().unwrap());
        assert_eq!(v.verify_at(&h, BODY, TS), Err(VerifyError::DigestMismatch));
        // Other algorithms beside sha-256 are skipped; sha-256 still checked.
        let both = format!("sha-512=:AAAA:, {}", content_digest(BODY));
        h.insert(HEADER_CONTENT_DIGEST, both.parse().unwrap());
        assert_eq!(v.verify_at(&h, BODY, TS), Ok(()));
    }

    #[test]
    fn bad_secrets_are_refused_with_their_position() {
        assert!(matches!(Signer::new(&[]), Err(SecretError::Empty)));
        let err = Signer::new(&[Secret::new(SECRET), Secret::new("hunter2")]).unwrap_err();
        assert!(matches!(err, SecretError::Invalid { index: 1, .. }), "{err}");
        let err = verify("whsec_!!", &headers(ID, TS, EXPECTED), BODY).unwrap_err();
        assert!(matches!(err, VerifyError::Secret(_)), "{err}");
    }

    #[test]
    fn debug_never_shows_keys() {
        let shown = format!("{:?} {:?}", signer(&[SECRET]), verifier(&[SECRET]));
        assert!(!shown.contains(&SECRET[6..]), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
    }
}
