//! Decide, then act: what an attempt's result means, and when to try again.
//!
//! [`classify`] maps what came back from an endpoint to an [`Outcome`];
//! [`RetryPolicy`] maps an attempt number to a delay. Both are pure, so the
//! dispatcher's behaviour is tested here with tables of cases.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

use crate::config::DeliveryConfig;

/// What an attempt produced, as far as the decision needs it.
#[derive(Clone, Copy, Debug)]
pub enum Attempted<'a> {
    /// The endpoint answered with `status`, and maybe a `Retry-After` header.
    Answered { status: u16, retry_after: Option<&'a str> },
    /// No answer: timeout, connection or TLS failure (`retryable`), or a
    /// permanent refusal such as a blocked private address.
    Failed { retryable: bool },
}

/// What to do about an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: acknowledged.
    Delivered,
    /// Try again, not before `not_before` if the endpoint said so.
    Retry { not_before: Option<Duration> },
    /// 410 Gone: the endpoint is gone; stop delivering to the subscription.
    Gone,
    /// Will never succeed as configured: no retry.
    Refused,
}

/// Maps an attempt to its outcome: 2xx delivered; 410 gone; 429 and 503
/// retry honouring `Retry-After` (up to `delivery.retry_after_max`); every other status (3xx included:
/// redirects are not followed), timeouts, connection and TLS errors retry;
/// permanent failures are refused.
pub fn classify(attempted: Attempted<'_>, now: DateTime<Utc>) -> Outcome {
    match attempted {
        Attempted::Answered { status: 200..=299, .. } => Outcome::Delivered,
        Attempted::Answered { status: 410, .. } => Outcome::Gone,
        Attempted::Answered {
            status: 429 | 503,
            retry_after,
        } => Outcome::Retry {
            not_before: retry_after.and_then(|v| parse_retry_after(v, now)),
        },
        Attempted::Answered { .. } => Outcome::Retry { not_before: None },
        Attempted::Failed { retryable: true } => Outcome::Retry { not_before: None },
        Attempted::Failed { retryable: false } => Outcome::Refused,
    }
}

/// Parses `Retry-After`: delta seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let at: DateTime<Utc> = at.into();
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// Exponential backoff with jitter.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Delay before the first retry.
    pub initial: Duration,
    /// Growth factor per retry.
    pub multiplier: f64,
    /// Cap of a backoff delay.
    pub max: Duration,
    /// Cap of a delay an endpoint asks for with `Retry-After`, which may
    /// be beyond `max` (`delivery.retry_after_max`).
    pub retry_after_max: Duration,
}

/// Relative jitter applied to each delay: +/- 20 %.
const JITTER: f64 = 0.2;

impl RetryPolicy {
    /// The policy of `[delivery]`, with an optional per-subscription
    /// `max_retries`.
    pub fn from_config(config: &DeliveryConfig, max_retries: Option<u32>) -> RetryPolicy {
        RetryPolicy {
            max_retries: max_retries.unwrap_or(config.max_retries),
            initial: config.backoff_initial,
            multiplier: config.backoff_multiplier,
            max: config.backoff_max,
            retry_after_max: config.retry_after_max,
        }
    }

    /// The delay before retry number `retry` (1 for the first retry),
    /// before jitter.
    pub fn base_delay(&self, retry: u32) -> Duration {
        let exp = self.multiplier.powi(retry.saturating_sub(1).min(64) as i32);
        let secs = (self.initial.as_secs_f64() * exp).min(self.max.as_secs_f64());
        Duration::from_secs_f64(secs)
    }

    /// When to try again after `attempts` attempts have failed, or `None`
    /// when retries are used up. `not_before` (from `Retry-After`) wins
    /// over a shorter backoff, even beyond `max`, up to `retry_after_max`.
    pub fn next(&self, attempts: u32, not_before: Option<Duration>, rng: &mut impl Rng) -> Option<Duration> {
        if attempts > self.max_retries {
            return None;
        }
        let base = self.base_delay(attempts);
        let jittered = base.mul_f64(1.0 + rng.random_range(-JITTER..=JITTER)).min(self.max);
        Some(match not_before {
            Some(asked) => asked.min(self.retry_after_max).max(jittered),
            None => jittered,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z").unwrap().into()
    }

    #[test]
    fn outcomes_by_status_and_failure() {
        let retry = Outcome::Retry { not_before: None };
        let cases: &[(Attempted<'_>, Outcome)] = &[
            (
                Attempted::Answered {
                    status: 200,
                    retry_after: None,
                },
                Outcome::Delivered,
            ),
            (
                Attempted::Answered {
                    status: 204,
                    retry_after: None,
                },
                Outcome::Delivered,
            ),
            (
                Attempted::Answered {
                    status: 299,
                    retry_after: None,
                },
                Outcome::Delivered,
            ),
            (
                Attempted::Answered {
                    status: 301,
                    retry_after: None,
                },
                retry,
            ),
            (
                Attempted::Answered {
                    status: 302,
                    retry_after: None,
                },
                retry,
            ),
            (
                Attempted::Answered {
                    status: 400,
                    retry_after: None,
                },
                retry,
            ),
            (
                Attempted::Answered {
                    status: 404,
                    retry_after: None,
                },
                retry,
            ),
            (
                Attempted::Answered {
                    status: 410,
                    retry_after: None,
                },
                Outcome::Gone,
            ),
            (
                Attempted::Answered {
                    status: 500,
                    retry_after: Some("30"),
                },
                retry,
            ),
            (
                Attempted::Answered {
                    status: 429,
                    retry_after: Some("30"),
                },
                Outcome::Retry {
                    not_before: Some(Duration::from_secs(30)),
                },
            ),
            (
                Attempted::Answered {
                    status: 503,
                    retry_after: Some("Mon, 23 Nov 2026 10:02:00 GMT"),
                },
                Outcome::Retry {
                    not_before: Some(Duration::from_secs(120)),
                },
            ),
            (
                Attempted::Answered {
                    status: 429,
                    retry_after: Some("soon"),
                },
                retry,
            ),
            (
                Attempted::Answered {
                    status: 429,
                    retry_after: None,
                },
                retry,
            ),
            (Attempted::Failed { retryable: true }, retry),
            (Attempted::Failed { retryable: false }, Outcome::Refused),
        ];
        for (attempted, want) in cases {
            assert_eq!(classify(*attempted, now()), *want, "{attempted:?}");
        }
    }

    #[test]
    fn retry_after_in_the_past_means_now() {
        assert_eq!(
            parse_retry_after("Mon, 23 Nov 2026 09:00:00 GMT", now()),
            Some(Duration::ZERO)
        );
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_retries: 5,
            initial: Duration::from_secs(5),
            multiplier: 4.0,
            max: Duration::from_secs(3600),
            retry_after_max: Duration::from_secs(86_400),
        }
    }

    #[test]
    fn backoff_grows_then_caps() {
        let p = policy();
        let want = [5, 20, 80, 320, 1280, 3600, 3600];
        for (n, secs) in want.iter().enumerate() {
            assert_eq!(
                p.base_delay(n as u32 + 1),
                Duration::from_secs(*secs),
                "retry {}",
                n + 1
            );
        }
    }

    #[test]
    fn retries_stop_after_max_and_stay_within_jitter() {
        let p = policy();
        let mut rng = StdRng::seed_from_u64(7);
        for attempts in 1..=5 {
            let base = p.base_delay(attempts).as_secs_f64();
            for _ in 0..200 {
                let d = p.next(attempts, None, &mut rng).unwrap().as_secs_f64();
                assert!(
                    d >= base * 0.8 - 1e-9 && d <= base * 1.2 + 1e-9,
                    "attempt {attempts}: {d} vs {base}"
                );
            }
        }
        assert_eq!(p.next(6, None, &mut rng), None, "5 retries = 6 attempts, then dead");
        let zero = RetryPolicy { max_retries: 0, ..p };
        assert_eq!(zero.next(1, None, &mut rng), None);
    }

    #[test]
    fn retry_after_wins_over_shorter_backoff_within_the_cap() {
        let p = policy();
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(
            p.next(1, Some(Duration::from_secs(60)), &mut rng),
            Some(Duration::from_secs(60))
        );
        let short = p.next(3, Some(Duration::from_secs(1)), &mut rng).unwrap();
        assert!(short >= Duration::from_secs(64), "{short:?}");
    }

    #[test]
    fn retry_after_beyond_backoff_max_is_honoured_up_to_retry_after_max() {
        // backoff_max is 1h, retry_after_max 24h.
        let p = policy();
        let mut rng = StdRng::seed_from_u64(2);
        let cases = [(7_200, 7_200), (86_400, 86_400), (3 * 86_400, 86_400)];
        for (asked, want) in cases {
            assert_eq!(
                p.next(1, Some(Duration::from_secs(asked)), &mut rng),
                Some(Duration::from_secs(want)),
                "Retry-After: {asked}"
            );
        }
        // A cap below backoff_max never shortens the backoff itself.
        let low = RetryPolicy {
            retry_after_max: Duration::from_secs(10),
            ..p
        };
        let d = low.next(5, Some(Duration::from_secs(86_400)), &mut rng).unwrap();
        assert!(d >= Duration::from_secs(1024), "{d:?}");
    }
}
