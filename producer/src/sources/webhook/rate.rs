//! Per-endpoint rate limits: a token bucket of `burst` requests, refilled
//! at `per_second`. A request that finds it empty is answered 429 with
//! `Retry-After` (the whole seconds until a token is back).

use std::time::{Duration, Instant};

use serde::Deserialize;

/// `rate_limit: { per_second: 5, burst: 20 }` of an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Requests per second, sustained (may be fractional: 0.5 is one every
    /// two seconds).
    pub per_second: f64,
    /// Requests that may come at once after a quiet spell.
    pub burst: u32,
}

impl RateLimit {
    pub fn check(&self) -> Result<(), String> {
        if !(self.per_second.is_finite() && self.per_second > 0.0) || self.burst == 0 {
            return Err(format!(
                "rate_limit {{ per_second: {}, burst: {} }}: per_second must be above 0 and \
                 burst at least 1",
                self.per_second, self.burst
            ));
        }
        Ok(())
    }
}

/// One endpoint's bucket.
#[derive(Debug)]
pub struct Bucket {
    limit: RateLimit,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(limit: RateLimit, now: Instant) -> Bucket {
        Bucket {
            limit,
            tokens: f64::from(limit.burst),
            last: now,
        }
    }

    /// Takes a token for a request arriving at `now`, or says how long
    /// until there is one.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens =
            (self.tokens + elapsed * self.limit.per_second).min(f64::from(self.limit.burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.limit.per_second,
            ))
        }
    }
}

/// `Retry-After` for a wait: whole seconds, at least 1.
pub fn retry_after(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_requests_wait_for_the_refill() {
        let t0 = Instant::now();
        let mut b = Bucket::new(
            RateLimit {
                per_second: 2.0,
                burst: 3,
            },
            t0,
        );
        for _ in 0..3 {
            assert_eq!(b.take(t0), Ok(()));
        }
        let wait = b.take(t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert_eq!(retry_after(wait), 1);
        assert_eq!(b.take(t0 + Duration::from_millis(500)), Ok(()));
        // A long quiet spell refills the burst, no more.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(b.take(later), Ok(()));
        }
        assert!(b.take(later).is_err());
    }

    #[test]
    fn a_limit_must_let_something_through() {
        let l = |per_second, burst| RateLimit { per_second, burst };
        assert!(l(0.0, 1).check().is_err());
        assert!(l(1.0, 0).check().is_err());
        assert!(l(f64::NAN, 1).check().is_err());
        assert!(l(0.5, 1).check().is_ok());
    }
}
