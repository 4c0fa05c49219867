//! Per-subscription request rate limits, kept in the queue backend so that
//! every hookd process sharing it draws from one bucket.
//!
//! The bucket is the generic cell rate algorithm (GCRA): `per_second` sets
//! the emission interval `T = 1000 / per_second` ms, and a burst of `b`
//! lets `b` requests go at once after a quiet spell. The whole state is one
//! number, the theoretical arrival time `tat` of the next request: a request
//! at `now` conforms if `max(tat, now) - now <= (b - 1) * T`, and then moves
//! `tat` on by `T`. A request that does not conform learns when one will:
//! at `tat - (b - 1) * T`.
//!
//! [`take`] is the rule; the embedded backend applies it in memory (one
//! process owns that store), and the Redis backend's script mirrors it over
//! a key per subscription, so processes sharing a Redis share the limit.

use serde::Serialize;

use super::Millis;
use crate::config::RateLimit;

/// What [`super::StateStore::take_tokens`] granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Tokens {
    /// How many of the requests asked for may go now (the first ones).
    pub granted: u32,
    /// When the next token is available, if fewer were granted than asked.
    pub next_at: Option<Millis>,
}

/// The emission interval of `limit`, ms.
pub fn interval(limit: &RateLimit) -> f64 {
    1000.0 / limit.per_second
}

/// The emission interval of `limit` rounded up to whole ms (at least 1):
/// how far apart to schedule deliveries waiting for tokens.
pub fn interval_ms(limit: &RateLimit) -> Millis {
    (interval(limit).ceil() as Millis).max(1)
}

/// Takes up to `want` tokens at `now` from a bucket whose theoretical
/// arrival time is `tat` (`None`: a full bucket). Returns the new `tat` and
/// what was granted.
pub fn take(tat: Option<f64>, limit: &RateLimit, want: u32, now: Millis) -> (f64, Tokens) {
    let interval = interval(limit);
    let tolerance = interval * f64::from(limit.burst().saturating_sub(1));
    let now = now as f64;
    let mut tat = tat.unwrap_or(now).max(now);
    let mut granted = 0;
    while granted < want && tat - now <= tolerance {
        tat += interval;
        granted += 1;
    }
    let next_at = (granted < want).then(|| (tat - tolerance).ceil() as Millis);
    (tat, Tokens { granted, next_at })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(per_second: f64, burst: Option<u32>) -> RateLimit {
        RateLimit { per_second, burst }
    }

    /// Takes one token at a time, like a caller asking for one.
    fn one(tat: &mut Option<f64>, l: &RateLimit, now: Millis) -> Result<(), Millis> {
        let (next, t) = take(*tat, l, 1, now);
        *tat = Some(next);
        match t.next_at {
            None => Ok(()),
            Some(at) => Err(at),
        }
    }

    #[test]
    fn a_burst_goes_at_once_then_the_rate_holds() {
        let l = limit(10.0, Some(3));
        let (mut tat, t) = (None, 1_000_000);
        for _ in 0..3 {
            assert_eq!(one(&mut tat, &l, t), Ok(()));
        }
        assert_eq!(one(&mut tat, &l, t), Err(t + 100), "the 4th waits one interval");
        assert_eq!(one(&mut tat, &l, t + 99), Err(t + 100));
        assert_eq!(one(&mut tat, &l, t + 100), Ok(()));
        assert_eq!(one(&mut tat, &l, t + 100), Err(t + 200));
        // Over a long run, the sustained rate: 10 a second.
        let sent = (t + 101..t + 10_101)
            .step_by(5)
            .filter(|&ms| one(&mut tat, &l, ms).is_ok())
            .count();
        assert!((99..=101).contains(&sent), "{sent} in 10s");
    }

    #[test]
    fn several_at_once_get_what_the_bucket_holds() {
        let l = limit(5.0, Some(2));
        let (tat, t) = take(None, &l, 12, 0);
        assert_eq!(
            t,
            Tokens {
                granted: 2,
                next_at: Some(200)
            }
        );
        let (tat, t) = take(Some(tat), &l, 10, 100);
        assert_eq!(
            t,
            Tokens {
                granted: 0,
                next_at: Some(200)
            }
        );
        let (_, t) = take(Some(tat), &l, 10, 200);
        assert_eq!(
            t,
            Tokens {
                granted: 1,
                next_at: Some(400)
            }
        );
    }

    #[test]
    fn quiet_spells_refill_the_burst_but_never_beyond() {
        let l = limit(1.0, Some(2));
        let (mut tat, t) = (None, 5_000);
        assert!(one(&mut tat, &l, t).is_ok() && one(&mut tat, &l, t).is_ok());
        assert!(one(&mut tat, &l, t).is_err());
        let later = t + 60_000;
        assert!(one(&mut tat, &l, later).is_ok() && one(&mut tat, &l, later).is_ok());
        assert_eq!(one(&mut tat, &l, later), Err(later + 1000));
    }

    #[test]
    fn fractional_rates_and_default_bursts() {
        let l = limit(0.5, None);
        assert_eq!(l.burst(), 1);
        assert_eq!(interval_ms(&l), 2000);
        let mut tat = None;
        assert!(one(&mut tat, &l, 0).is_ok());
        assert_eq!(one(&mut tat, &l, 1), Err(2000));
        assert_eq!(limit(2.5, None).burst(), 3);
    }
}
