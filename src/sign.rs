//! Signing and verification of webhooks, per Standard Webhooks.
//!
//! Every delivery carries `webhook-id`, `webhook-timestamp` and
//! `webhook-signature`. The signed content is `{id}.{timestamp}.{body}`;
//! each of the subscription's secrets signs it, and the signatures go
//! space-separated in `webhook-signature` (so a receiver can rotate keys,
//! and a rotation can even change scheme):
//!
//! - a `whsec_<base64 of 24 to 64 bytes>` secret signs with HMAC-SHA256:
//!   `v1,<base64 of the 32-byte MAC>`;
//! - a `whsk_<base64>` secret key signs with Ed25519 (RFC 8032):
//!   `v1a,<base64 of the 64-byte signature>`. Receivers verify it with the
//!   matching public key, `whpk_<base64 of its 32 bytes>`, which is no
//!   secret: a receiver holding it cannot sign.
//!
//! The specification names `whsk_` and `whpk_` but not the bytes behind the
//! secret key: hookd makes `whsk_` keys as Svix does, the 64-byte key pair
//! (32-byte seed, then the 32-byte public key), and also reads a bare
//! 32-byte seed, the form of the Go and Python reference libraries' pending
//! asymmetric support.
//!
//! hookd also sends `content-digest` (RFC 9530, `sha-256=:<base64>:`).
//!
//! [`SigningKey`] reads a secret (for the config file's checks, the API's
//! subscriptions and `hookd config check` alike). The sending side is
//! [`Signer`], built once per subscription; the receiving side is
//! [`Verifier`] (or the one-call [`verify`]), which any Rust receiver can
//! use. Receivers in other languages can use any Standard Webhooks library
//! (or any Ed25519 implementation for `v1a`): the wire format is the same.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::model::Secret;

/// Header carrying the delivery's id, stable across retries: the receiver's
/// deduplication key.
pub const HEADER_WEBHOOK_ID: &str = "webhook-id";
/// Header carrying the Unix time, in seconds, of this attempt.
pub const HEADER_WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
/// Header carrying the space-separated `v1,<base64>` and `v1a,<base64>`
/// signatures.
pub const HEADER_WEBHOOK_SIGNATURE: &str = "webhook-signature";
/// Header carrying the RFC 9530 digest of the body.
pub const HEADER_CONTENT_DIGEST: &str = "content-digest";

/// Prefix of an HMAC-SHA256 signing secret (`v1` signatures).
pub const HMAC_SECRET_PREFIX: &str = "whsec_";
/// Prefix of an Ed25519 secret key (`v1a` signatures).
pub const ED25519_SECRET_PREFIX: &str = "whsk_";
/// Prefix of an Ed25519 public key, which verifies `v1a` signatures.
pub const ED25519_PUBLIC_PREFIX: &str = "whpk_";

/// Default window within which a receiver accepts a timestamp, both in the
/// past and in the future (clock skew).
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// Length of one HMAC signature in the header: `v1,` and 44 base64 characters.
const HMAC_SIGNATURE_LEN: usize = 3 + 44;
/// Length of one Ed25519 signature in the header: `v1a,` and 88 base64
/// characters.
const ED25519_SIGNATURE_LEN: usize = 4 + 88;

type HmacSha256 = Hmac<Sha256>;

/// A secret that cannot be used to sign or verify.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// No secret was given.
    #[error("no signing secret given: configure at least one whsec_ or whsk_ secret")]
    Empty,
    /// A secret is not one of the key formats.
    #[error("secret #{index} is unusable: it {problem}")]
    Invalid {
        /// Position of the secret in the list, from 0.
        index: usize,
        /// What is wrong with it.
        problem: String,
    },
}

/// The two signature schemes of Standard Webhooks: the kind of secret a
/// subscription is given (`"hmac"` or `"ed25519"` in the API).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// HMAC-SHA256 under a shared `whsec_` secret: `v1` signatures.
    #[default]
    Hmac,
    /// Ed25519 under a `whsk_` secret key, verified with its `whpk_`
    /// public key: `v1a` signatures.
    Ed25519,
}

impl Scheme {
    /// A new random secret of this scheme: `whsec_` and 32 random bytes,
    /// or `whsk_` and a new key pair (its 32-byte seed and 32-byte public
    /// key).
    pub fn new_secret(self) -> String {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        match self {
            Scheme::Hmac => format!("{HMAC_SECRET_PREFIX}{}", BASE64.encode(bytes)),
            Scheme::Ed25519 => {
                let pair = Ed25519KeyPair::from_seed_unchecked(&bytes).expect("any 32 bytes are an Ed25519 seed");
                let mut both = bytes.to_vec();
                both.extend_from_slice(pair.public_key().as_ref());
                format!("{ED25519_SECRET_PREFIX}{}", BASE64.encode(both))
            }
        }
    }
}

/// A signing secret, read: the one reader of secrets, used by the config
/// file's checks, the signer, the verifier and `hookd config check`.
#[derive(Clone)]
pub struct SigningKey(Key);

/// What a [`SigningKey`] holds.
#[derive(Clone)]
enum Key {
    /// `whsec_…`: the HMAC-SHA256 state, already keyed.
    Hmac(HmacSha256),
    /// `whsk_…`: an Ed25519 key pair (not `Clone` in ring, hence shared).
    Ed25519(Arc<Ed25519KeyPair>),
}

impl SigningKey {
    /// Reads `whsec_<base64>` (24 to 64 bytes) or `whsk_<base64>` (a 64-byte
    /// Ed25519 seed and public key, or a 32-byte seed). The problem, if
    /// any, reads after "it" (`it must start with …`).
    pub fn parse(secret: &str) -> Result<SigningKey, String> {
        if let Some(b64) = secret.strip_prefix(HMAC_SECRET_PREFIX) {
            let key = BASE64
                .decode(b64)
                .map_err(|_| format!("is not valid base64 after `{HMAC_SECRET_PREFIX}`"))?;
            if !(24..=64).contains(&key.len()) {
                return Err(format!("decodes to {} bytes; use 24 to 64 random bytes", key.len()));
            }
            let mac = HmacSha256::new_from_slice(&key).map_err(|e| e.to_string())?;
            return Ok(SigningKey(Key::Hmac(mac)));
        }
        if let Some(b64) = secret.strip_prefix(ED25519_SECRET_PREFIX) {
            let key = BASE64
                .decode(b64)
                .map_err(|_| format!("is not valid base64 after `{ED25519_SECRET_PREFIX}`"))?;
            let pair = match key.len() {
                32 => Ed25519KeyPair::from_seed_unchecked(&key).map_err(|e| format!("is not an Ed25519 seed: {e}"))?,
                64 => Ed25519KeyPair::from_seed_and_public_key(&key[..32], &key[32..]).map_err(|_| {
                    "is not an Ed25519 key pair: its last 32 bytes are not the public key of its first 32 (the seed)"
                        .to_string()
                })?,
                n => {
                    return Err(format!(
                        "decodes to {n} bytes; an Ed25519 secret key is its 32-byte seed and 32-byte public key (64 bytes), or the seed alone"
                    ))
                }
            };
            return Ok(SigningKey(Key::Ed25519(Arc::new(pair))));
        }
        if secret.starts_with(ED25519_PUBLIC_PREFIX) {
            return Err(format!(
                "is a public key (`{ED25519_PUBLIC_PREFIX}`), which cannot sign: give the matching `{ED25519_SECRET_PREFIX}` secret key"
            ));
        }
        Err(format!(
            "must start with `{HMAC_SECRET_PREFIX}` (HMAC) or `{ED25519_SECRET_PREFIX}` (Ed25519) followed by base64"
        ))
    }

    /// The scheme this key signs with.
    pub fn scheme(&self) -> Scheme {
        match self.0 {
            Key::Hmac(_) => Scheme::Hmac,
            Key::Ed25519(_) => Scheme::Ed25519,
        }
    }

    /// The `whpk_…` public key receivers verify with, for an Ed25519 key;
    /// none for an HMAC secret (which has nothing to publish).
    pub fn public_key(&self) -> Option<String> {
        match &self.0 {
            Key::Hmac(_) => None,
            Key::Ed25519(pair) => Some(format!(
                "{ED25519_PUBLIC_PREFIX}{}",
                BASE64.encode(pair.public_key().as_ref())
            )),
        }
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.public_key() {
            Some(public) => write!(f, "SigningKey::Ed25519 {{ public: {public}, secret: [redacted] }}"),
            None => f.write_str("SigningKey::Hmac([redacted])"),
        }
    }
}

/// The `whpk_…` public key of a `whsk_…` secret; none for a `whsec_`
/// secret or one that does not parse.
pub fn public_key_of(secret: &str) -> Option<String> {
    SigningKey::parse(secret).ok().and_then(|k| k.public_key())
}

/// Reads every secret, naming the position of a bad one.
fn signing_keys(secrets: impl IntoIterator<Item = impl AsRef<str>>) -> Result<Vec<SigningKey>, SecretError> {
    let keys = secrets
        .into_iter()
        .enumerate()
        .map(|(index, secret)| {
            SigningKey::parse(secret.as_ref()).map_err(|problem| SecretError::Invalid { index, problem })
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

/// The signed content `{id}.{timestamp}.{body}` in one buffer, as Ed25519
/// signs and verifies it (HMAC is fed the pieces instead, see [`mac`]).
fn signed_content(id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut digits = [0u8; 20];
    let timestamp = decimal(timestamp, &mut digits);
    let mut out = Vec::with_capacity(id.len() + timestamp.len() + body.len() + 2);
    out.extend_from_slice(id.as_bytes());
    out.push(b'.');
    out.extend_from_slice(timestamp);
    out.push(b'.');
    out.extend_from_slice(body);
    out
}

/// Signs deliveries with a subscription's secrets; build one per
/// subscription and reuse it.
#[derive(Clone)]
pub struct Signer {
    /// One key per secret, read once, in configuration order.
    keys: Vec<SigningKey>,
}

impl Signer {
    /// Prepares a signer from `whsec_` and `whsk_` secrets (at least one).
    pub fn new(secrets: &[Secret]) -> Result<Signer, SecretError> {
        Ok(Signer {
            keys: signing_keys(secrets.iter().map(Secret::expose))?,
        })
    }

    /// The `webhook-signature` header value for one attempt: `v1,<base64>`
    /// per `whsec_` secret and `v1a,<base64>` per `whsk_` one, in the order
    /// of the secrets, space-separated.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let len = self
            .keys
            .iter()
            .map(|k| match k.0 {
                Key::Hmac(_) => HMAC_SIGNATURE_LEN + 1,
                Key::Ed25519(_) => ED25519_SIGNATURE_LEN + 1,
            })
            .sum();
        let mut out = String::with_capacity(len);
        // Built on the first Ed25519 key, for all of them.
        let mut content: Option<Vec<u8>> = None;
        for (n, key) in self.keys.iter().enumerate() {
            if n > 0 {
                out.push(' ');
            }
            match &key.0 {
                Key::Hmac(key) => {
                    out.push_str("v1,");
                    BASE64.encode_string(mac(key, id, timestamp, body), &mut out);
                }
                Key::Ed25519(pair) => {
                    let content = content.get_or_insert_with(|| signed_content(id, timestamp, body));
                    out.push_str("v1a,");
                    BASE64.encode_string(pair.sign(content), &mut out);
                }
            }
        }
        out
    }

    /// How many secrets sign (one signature each).
    pub fn secrets(&self) -> usize {
        self.keys.len()
    }

    /// The `whpk_…` public keys of its Ed25519 secrets, in order.
    pub fn public_keys(&self) -> Vec<String> {
        self.keys.iter().filter_map(SigningKey::public_key).collect()
    }
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("secrets", &self.keys.len())
            .field("public_keys", &self.public_keys())
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
    /// No `v1,` or `v1a,` signature matches any key: wrong secret or
    /// public key, or the id, timestamp or body was altered.
    #[error("no signature matches: wrong secret or public key, or the id, timestamp or body was altered")]
    NoMatchingSignature,
    /// `content-digest` does not match the body.
    #[error("`content-digest` does not match the body: the body was altered in transit")]
    DigestMismatch,
    /// The secret given to [`verify`] is not usable.
    #[error("{0}")]
    Secret(String),
}

/// A key a [`Verifier`] accepts signatures by.
#[derive(Clone)]
enum Trusted {
    /// A shared `whsec_` secret: `v1` signatures.
    Hmac(HmacSha256),
    /// An Ed25519 public key (`whpk_`, or derived from a `whsk_`): `v1a`
    /// signatures.
    Ed25519([u8; 32]),
}

impl Trusted {
    /// Reads a `whsec_` secret, a `whpk_` public key or a `whsk_` secret
    /// key (of which only the public half is kept).
    fn parse(key: &str) -> Result<Trusted, String> {
        if let Some(b64) = key.strip_prefix(ED25519_PUBLIC_PREFIX) {
            let mut public = [0u8; 32];
            return match BASE64.decode_slice(b64, &mut public) {
                Ok(32) => Ok(Trusted::Ed25519(public)),
                Ok(n) => Err(format!("decodes to {n} bytes; an Ed25519 public key is 32")),
                Err(_) => Err(format!(
                    "is not the base64 of a 32-byte Ed25519 public key after `{ED25519_PUBLIC_PREFIX}`"
                )),
            };
        }
        match SigningKey::parse(key).map(|k| k.0) {
            Ok(Key::Hmac(mac)) => Ok(Trusted::Hmac(mac)),
            Ok(Key::Ed25519(pair)) => {
                let mut public = [0u8; 32];
                public.copy_from_slice(pair.public_key().as_ref());
                Ok(Trusted::Ed25519(public))
            }
            Err(_) if !key.starts_with(HMAC_SECRET_PREFIX) && !key.starts_with(ED25519_SECRET_PREFIX) => Err(format!(
                "must start with `{HMAC_SECRET_PREFIX}` (HMAC secret), `{ED25519_PUBLIC_PREFIX}` (Ed25519 public key) or `{ED25519_SECRET_PREFIX}` (Ed25519 secret key) followed by base64"
            )),
            Err(problem) => Err(problem),
        }
    }
}

/// Checks webhooks received from hookd (or any Standard Webhooks sender).
#[derive(Clone)]
pub struct Verifier {
    /// Every accepted key: HMAC states keyed once, Ed25519 public keys.
    keys: Vec<Trusted>,
    /// Largest accepted distance between the timestamp and now.
    tolerance: Duration,
}

impl Verifier {
    /// A verifier accepting signatures by any of `keys`: `whsec_…` secrets
    /// (`v1`), `whpk_…` public keys (`v1a`), or `whsk_…` secret keys (`v1a`,
    /// by their public half), mixed freely; with the default tolerance of 5
    /// minutes.
    pub fn new<S: AsRef<str>>(keys: &[S]) -> Result<Verifier, SecretError> {
        let keys = keys
            .iter()
            .enumerate()
            .map(|(index, key)| Trusted::parse(key.as_ref()).map_err(|problem| SecretError::Invalid { index, problem }))
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Verifier {
            keys,
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

        let expected: Vec<[u8; 32]> = self
            .keys
            .iter()
            .filter_map(|k| match k {
                Trusted::Hmac(k) => Some(mac(k, id, timestamp, body)),
                Trusted::Ed25519(_) => None,
            })
            .collect();
        let public: Vec<&[u8; 32]> = self
            .keys
            .iter()
            .filter_map(|k| match k {
                Trusted::Ed25519(public) => Some(public),
                Trusted::Hmac(_) => None,
            })
            .collect();
        // Built on the first `v1a` signature, if a public key is trusted.
        let mut content: Option<Vec<u8>> = None;
        let mut matched = subtle::Choice::from(0u8);
        for candidate in signatures.split_ascii_whitespace() {
            if let Some(encoded) = candidate.strip_prefix("v1,") {
                let mut given = [0u8; 32];
                match BASE64.decode_slice(encoded, &mut given) {
                    Ok(32) => {}
                    _ => continue,
                }
                for mac in &expected {
                    matched |= mac.ct_eq(&given);
                }
            } else if let Some(encoded) = candidate.strip_prefix("v1a,") {
                if public.is_empty() {
                    continue;
                }
                let mut given = [0u8; 64];
                match BASE64.decode_slice(encoded, &mut given) {
                    Ok(64) => {}
                    _ => continue,
                }
                let content = content.get_or_insert_with(|| signed_content(id, timestamp, body));
                for key in &public {
                    // A public-key check leaks nothing secret: no need for
                    // constant time across keys.
                    if UnparsedPublicKey::new(&ED25519, key).verify(content, &given).is_ok() {
                        matched |= subtle::Choice::from(1u8);
                    }
                }
            }
            // Other schemes (v2, …) are not ours to check.
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
        let public: Vec<String> = self
            .keys
            .iter()
            .filter_map(|k| match k {
                Trusted::Ed25519(public) => Some(format!("{ED25519_PUBLIC_PREFIX}{}", BASE64.encode(public))),
                Trusted::Hmac(_) => None,
            })
            .collect();
        f.debug_struct("Verifier")
            .field("keys", &self.keys.len())
            .field("public_keys", &public)
            .field("secrets", &"[redacted]")
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

/// Verifies a received webhook with one key (a `whsec_` secret or a
/// `whpk_` public key) and the default tolerance. Build a [`Verifier`]
/// once instead when verifying many.
pub fn verify(key: &str, headers: &http::HeaderMap, body: &[u8]) -> Result<(), VerifyError> {
    Verifier::new(&[key])
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
        let key = SigningKey::parse(SEED_64).unwrap();
        let shown = format!("{key:?} {:?} {:?}", signer(&[SEED_64]), verifier(&[SEED_64]));
        assert!(!shown.contains(&SEED_64[5..40]), "{shown}");
        assert!(!shown.contains(&SEED_32[5..40]), "{shown}");
        assert!(shown.contains(PUBLIC), "the public key is no secret: {shown}");
        let shown = format!("{:?}", SigningKey::parse(SECRET).unwrap());
        assert!(!shown.contains(&SECRET[6..]), "{shown}");
    }

    // Ed25519 (`v1a`). The specification publishes no `v1a` vector with its
    // key (its example header's `v1a,hnO3…` comes without one); this one is
    // the Go reference library's (standard-webhooks pull request 253,
    // `TestAsymmetricWebhookSign`): the 32-byte seed
    // "TESTSIGNINGKEYDONOTUSETHISFORANY" over the same message as the `v1`
    // vector. Python's `cryptography` gives the same signature and public key.
    const SEED_32: &str = "whsk_VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk=";
    /// The same key as the 64-byte seed and public key, as hookd makes them.
    const SEED_64: &str =
        "whsk_VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTllmU3h6Dt1JKqLSahf2FBSTeius6i4rdBVBKUlrbjxz+A==";
    const PUBLIC: &str = "whpk_ZlN4eg7dSSqi0moX9hQUk3orrOouK3QVQSlJa248c/g=";
    const EXPECTED_V1A: &str =
        "v1a,tQ9V2XOqn7jL/DQenEFpqIugdBVtiMmER5mhSkXBNwM0mkATuDe6KYYUuxqtaiHeYGb7KaaBRdM5WqyeFiL8Ag==";

    #[test]
    fn ed25519_reference_vector() {
        for secret in [SEED_32, SEED_64] {
            let key = SigningKey::parse(secret).unwrap();
            assert_eq!(key.scheme(), Scheme::Ed25519);
            assert_eq!(key.public_key().as_deref(), Some(PUBLIC), "{secret}");
            assert_eq!(signer(&[secret]).sign(ID, TS, BODY), EXPECTED_V1A, "{secret}");
        }
        let h = headers(ID, TS, EXPECTED_V1A);
        for key in [PUBLIC, SEED_32, SEED_64] {
            assert_eq!(verifier(&[key]).verify_at(&h, BODY, TS), Ok(()), "{key}");
        }
        assert_eq!(public_key_of(SEED_64).as_deref(), Some(PUBLIC));
        assert_eq!(public_key_of(SECRET), None);
    }

    #[test]
    fn ed25519_round_trip_with_a_new_key() {
        let secret = Scheme::Ed25519.new_secret();
        assert!(secret.starts_with("whsk_"), "{secret}");
        assert_eq!(BASE64.decode(&secret[5..]).unwrap().len(), 64);
        let public = public_key_of(&secret).unwrap();
        let body = br#"{"type":"coupon.redeemed","data":{}}"#;
        let sig = signer(&[&secret]).sign("evt_1", 1_700_000_000, body);
        assert!(sig.starts_with("v1a,") && sig.len() == ED25519_SIGNATURE_LEN, "{sig}");
        let mut h = headers("evt_1", 1_700_000_000, &sig);
        h.insert(HEADER_CONTENT_DIGEST, content_digest(body).parse().unwrap());
        assert_eq!(verifier(&[&public]).verify_at(&h, body, 1_700_000_010), Ok(()));
        assert_eq!(verifier(&[&secret]).verify_at(&h, body, 1_700_000_010), Ok(()));
        // Another key pair, or an HMAC secret, does not verify it.
        for other in [PUBLIC, SECRET] {
            assert_eq!(
                verifier(&[other]).verify_at(&h, body, 1_700_000_010),
                Err(VerifyError::NoMatchingSignature),
                "{other}"
            );
        }
        // Timestamps are checked as for v1.
        assert!(matches!(
            verifier(&[&public]).verify_at(&h, body, 1_700_000_000 + 301),
            Err(VerifyError::TooOld { .. })
        ));
    }

    #[test]
    fn every_tampered_byte_fails_v1a() {
        let v = verifier(&[PUBLIC]).with_tolerance(Duration::from_secs(u64::MAX));
        let no = Err(VerifyError::NoMatchingSignature);
        assert_eq!(v.verify_at(&headers(ID, TS, EXPECTED_V1A), BODY, TS), Ok(()));
        for at in 0..ID.len() {
            let mut id = ID.as_bytes().to_vec();
            id[at] = if id[at] == b'x' { b'y' } else { b'x' };
            let id = String::from_utf8(id).unwrap();
            assert_eq!(
                v.verify_at(&headers(&id, TS, EXPECTED_V1A), BODY, TS),
                no,
                "id byte {at}"
            );
        }
        let ts = TS.to_string();
        for at in 0..ts.len() {
            let mut digits = ts.as_bytes().to_vec();
            digits[at] = b'0' + (digits[at] - b'0' + 1) % 10;
            let mut h = headers(ID, TS, EXPECTED_V1A);
            h.insert(
                HEADER_WEBHOOK_TIMESTAMP,
                String::from_utf8(digits).unwrap().parse().unwrap(),
            );
            assert_eq!(v.verify_at(&h, BODY, TS), no, "timestamp digit {at}");
        }
        for at in 0..BODY.len() {
            let mut body = BODY.to_vec();
            body[at] ^= 0x01;
            assert_eq!(
                v.verify_at(&headers(ID, TS, EXPECTED_V1A), &body, TS),
                no,
                "body byte {at}"
            );
        }
        let raw = BASE64.decode(&EXPECTED_V1A[4..]).unwrap();
        for at in 0..raw.len() {
            for bit in [0x01, 0x80] {
                let mut sig = raw.clone();
                sig[at] ^= bit;
                let h = headers(ID, TS, &format!("v1a,{}", BASE64.encode(&sig)));
                assert_eq!(v.verify_at(&h, BODY, TS), no, "signature byte {at} bit {bit:#x}");
            }
        }
        let truncated = &EXPECTED_V1A[..EXPECTED_V1A.len() - 4];
        for sig in [
            truncated,
            "v1a,",
            "v1a,not-base64",
            &EXPECTED_V1A.replace("v1a,", "v1,"),
            &EXPECTED_V1A.replace("v1a,", "v2a,"),
        ] {
            assert_eq!(v.verify_at(&headers(ID, TS, sig), BODY, TS), no, "{sig}");
        }
    }

    #[test]
    fn mixed_v1_and_v1a_header_verifies_with_either_key() {
        // A rotation from HMAC to Ed25519: both secrets sign.
        let sig = signer(&[SECRET, SEED_64]).sign(ID, TS, BODY);
        assert_eq!(sig, format!("{EXPECTED} {EXPECTED_V1A}"));
        let h = headers(ID, TS, &sig);
        for keys in [
            &[SECRET][..],
            &[PUBLIC],
            &[SEED_32],
            &[OTHER, PUBLIC],
            &[SECRET, PUBLIC],
        ] {
            assert_eq!(verifier(keys).verify_at(&h, BODY, TS), Ok(()), "{keys:?}");
        }
        assert_eq!(
            verifier(&[OTHER]).verify_at(&h, BODY, TS),
            Err(VerifyError::NoMatchingSignature)
        );
        // And the other way round, with the v1a signature first.
        let sig = signer(&[SEED_32, OTHER]).sign(ID, TS, BODY);
        let h = headers(ID, TS, &sig);
        assert!(sig.starts_with("v1a,") && sig.contains(" v1,"), "{sig}");
        assert_eq!(verifier(&[PUBLIC]).verify_at(&h, BODY, TS), Ok(()));
        assert_eq!(verifier(&[OTHER]).verify_at(&h, BODY, TS), Ok(()));
        assert_eq!(
            verifier(&[SECRET]).verify_at(&h, BODY, TS),
            Err(VerifyError::NoMatchingSignature)
        );
        // A tampered body fails both.
        let body = br#"{"test": 2432232315}"#;
        assert_eq!(
            verifier(&[PUBLIC, OTHER]).verify_at(&h, body, TS),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn bad_ed25519_keys_are_refused_saying_why() {
        let other_public = BASE64.encode([7u8; 32]);
        let mismatched = {
            let mut both = BASE64.decode(&SEED_64[5..]).unwrap();
            both[40] ^= 1;
            format!("whsk_{}", BASE64.encode(both))
        };
        let cases = [
            ("whsk_!!".to_string(), "base64"),
            (format!("whsk_{}", BASE64.encode([1u8; 31])), "31 bytes"),
            (mismatched, "not the public key"),
            (PUBLIC.to_string(), "public key"),
            ("pk_nope".to_string(), "must start with"),
        ];
        for (secret, why) in &cases {
            let err = SigningKey::parse(secret).unwrap_err();
            assert!(err.contains(why), "{secret}: {err}");
            let err = Signer::new(&[Secret::new(SECRET), Secret::new(secret.as_str())]).unwrap_err();
            assert!(matches!(err, SecretError::Invalid { index: 1, .. }), "{err}");
        }
        // A verifier takes public keys, but only well-formed ones.
        assert!(Verifier::new(&[format!("whpk_{other_public}")]).is_ok());
        for bad in ["whpk_!!", "whpk_AAAA", "whsk_AAAA", "pk_abc"] {
            let err = Verifier::new(&[SECRET, bad]).unwrap_err();
            assert!(matches!(err, SecretError::Invalid { index: 1, .. }), "{bad}: {err}");
        }
    }
}
