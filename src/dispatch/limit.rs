//! A subscription's request rate limit: a token bucket kept as one number
//! (the generic cell rate algorithm, GCRA).
//!
//! `per_second` sets the emission interval `T = 1000 / per_second` ms; a
//! burst of `b` lets `b` requests go at once after a quiet spell. The state
//! is the theoretical arrival time `tat` of the next request: a request at
//! `now` conforms if `tat - now <= (b - 1) * T`, and then moves `tat` on by
//! `T`. A request that does not conform learns when one will: at
//! `tat - (b - 1) * T`.
//!
//! The limiter is per process: with several hookd processes sharing one
//! queue, each sends to an endpoint at up to the configured rate.

use std::sync::Mutex;

use crate::config::RateLimit;
use crate::queue::Millis;

/// One subscription's limiter. Cheap to check: one uncontended lock.
#[derive(Debug)]
pub struct Limiter {
    /// The limit it enforces, so a reload can tell whether it changed.
    limit: RateLimit,
    /// Emission interval, ms.
    interval: f64,
    /// How far ahead of now `tat` may be and still conform, ms.
    tolerance: f64,
    /// Theoretical arrival time of the next request, ms.
    tat: Mutex<f64>,
}

impl Limiter {
    /// A limiter for `limit`, with its whole burst available.
    pub fn new(limit: RateLimit) -> Limiter {
        let interval = 1000.0 / limit.per_second;
        Limiter {
            limit,
            interval,
            tolerance: interval * f64::from(limit.burst().saturating_sub(1)),
            tat: Mutex::new(f64::MIN),
        }
    }

    /// The limit enforced.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Time between requests at the sustained rate, ms (at least 1).
    pub fn interval_ms(&self) -> Millis {
        (self.interval.ceil() as Millis).max(1)
    }

    /// Takes a request's token at `now`, or says when the next one is
    /// available (nothing is taken then).
    pub fn try_take(&self, now: Millis) -> Result<(), Millis> {
        let now = now as f64;
        let mut tat = self.tat.lock().unwrap_or_else(|e| e.into_inner());
        let next = tat.max(now);
        if next - now <= self.tolerance {
            *tat = next + self.interval;
            Ok(())
        } else {
            Err((next - self.tolerance).ceil() as Millis)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: f64, burst: Option<u32>) -> Limiter {
        Limiter::new(RateLimit { per_second, burst })
    }

    #[test]
    fn a_burst_goes_at_once_then_the_rate_holds() {
        let l = limiter(10.0, Some(3));
        let t = 1_000_000;
        for _ in 0..3 {
            assert_eq!(l.try_take(t), Ok(()));
        }
        assert_eq!(l.try_take(t), Err(t + 100), "the 4th waits one interval");
        assert_eq!(l.try_take(t + 99), Err(t + 100));
        assert_eq!(l.try_take(t + 100), Ok(()));
        assert_eq!(l.try_take(t + 100), Err(t + 200));
        // Over a long run, the sustained rate: 10 a second.
        let mut sent = 0;
        for ms in (t + 101..t + 10_101).step_by(5) {
            if l.try_take(ms).is_ok() {
                sent += 1;
            }
        }
        assert!((99..=101).contains(&sent), "{sent} in 10s");
    }

    #[test]
    fn quiet_spells_refill_the_burst_but_never_beyond() {
        let l = limiter(1.0, Some(2));
        let t = 5_000;
        assert!(l.try_take(t).is_ok() && l.try_take(t).is_ok());
        assert!(l.try_take(t).is_err());
        let later = t + 60_000;
        assert!(l.try_take(later).is_ok() && l.try_take(later).is_ok());
        assert_eq!(l.try_take(later), Err(later + 1000));
    }

    #[test]
    fn fractional_rates_and_default_bursts() {
        let l = limiter(0.5, None);
        assert_eq!(l.limit().burst(), 1);
        assert_eq!(l.interval_ms(), 2000);
        assert!(l.try_take(0).is_ok());
        assert_eq!(l.try_take(1), Err(2000));
        assert_eq!(limiter(2.5, None).limit().burst(), 3);
    }
}
