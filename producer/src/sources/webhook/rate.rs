//! Per-endpoint rate limits: a token bucket of `burst` requests, refilled
//! at `per_second`. A request that finds it empty is answered 429 with
//! `Retry-After` (the whole seconds until a token is back).
//!
//! A request that cannot be authenticated before its body is read (an
//! endpoint with an HMAC secret and no token) draws on its client
//! address's own bucket first ([`PerAddress`]), and on the endpoint's only
//! once its signature is verified: strangers cannot use up a sender's
//! budget.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
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

impl Bucket {
    /// Whether the bucket would be full at `now`: it holds nothing a new
    /// bucket would not, so it can be forgotten.
    fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.limit.per_second >= f64::from(self.limit.burst)
    }
}

/// The most client addresses remembered at once; past it, the addresses
/// whose buckets have refilled are forgotten, and if none has, all are (a
/// flood from that many addresses is beyond what a per-address limit can
/// hold back; the endpoint's own budget is still untouched by it).
const MAX_ADDRESSES: usize = 4096;

/// One bucket of the same limit per client address.
#[derive(Debug)]
pub struct PerAddress {
    limit: RateLimit,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl PerAddress {
    pub fn new(limit: RateLimit) -> PerAddress {
        PerAddress {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// [`Bucket::take`] from `addr`'s bucket.
    pub fn take(&self, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().expect("per-address buckets lock");
        if buckets.len() >= MAX_ADDRESSES && !buckets.contains_key(&addr) {
            buckets.retain(|_, b| !b.is_full(now));
            if buckets.len() >= MAX_ADDRESSES {
                buckets.clear();
            }
        }
        buckets
            .entry(addr)
            .or_insert_with(|| Bucket::new(self.limit, now))
            .take(now)
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
    fn each_address_has_its_own_bucket() {
        let t0 = Instant::now();
        let per = PerAddress::new(RateLimit {
            per_second: 1.0,
            burst: 2,
        });
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(per.take(a, t0).is_ok());
        assert!(per.take(a, t0).is_ok());
        assert!(per.take(a, t0).is_err());
        assert!(per.take(b, t0).is_ok());
    }

    #[test]
    fn addresses_are_forgotten_past_the_bound() {
        let t0 = Instant::now();
        let per = PerAddress::new(RateLimit {
            per_second: 1.0,
            burst: 1,
        });
        for i in 0..MAX_ADDRESSES as u32 + 10 {
            let _ = per.take(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(per.buckets.lock().unwrap().len() <= MAX_ADDRESSES);
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
