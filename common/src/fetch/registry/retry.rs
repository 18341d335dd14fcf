//! The retry policy of every registry request: exponential backoff with
//! jitter for transient failures (429, 5xx, network), `Retry-After`
//! honoured when the server says how long to wait, within limits.
//!
//! The same delays pace the resumes of a broken blob download (see
//! `resume`).

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use tracing::warn;

use super::FetchError;
use super::options::RegistryOptions;

const DEFAULT_MAX_ATTEMPTS: u32 = 5;
const MIN_DELAY: Duration = Duration::from_millis(500);
const MAX_DELAY: Duration = Duration::from_secs(30);
/// A server asking us to wait longer than this is not waited for: the
/// error is returned (it is transient), and the job is better retried
/// later by the queue than a worker held.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// One failed attempt: the error, and how long the server asked us to wait
/// before the next one (`Retry-After`), if it said.
pub(super) struct Failure {
    pub(super) error: FetchError,
    pub(super) retry_after: Option<Duration>,
}

impl From<FetchError> for Failure {
    fn from(error: FetchError) -> Self {
        Failure {
            error,
            retry_after: None,
        }
    }
}

/// Transient errors (429, 5xx, network: [`FetchError::is_transient`]) are
/// retried up to `max_attempts` attempts in all, waiting an exponentially
/// growing, jittered delay, or what `Retry-After` asks when that is longer.
/// Other errors return at once.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The first delay; each next one is about twice the last, up to 30 s.
    pub min_delay: Duration,
}

impl RetryPolicy {
    pub fn from_options(opts: &RegistryOptions) -> Self {
        RetryPolicy {
            max_attempts: if opts.max_attempts == 0 {
                DEFAULT_MAX_ATTEMPTS
            } else {
                opts.max_attempts
            },
            min_delay: MIN_DELAY,
        }
    }

    /// Delays between attempts; `times` of them at most.
    pub(super) fn backoff(&self, times: u32) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_jitter()
            .with_factor(2.0)
            .with_min_delay(self.min_delay)
            .with_max_delay(MAX_DELAY)
            .with_max_times(times as usize)
    }

    pub(super) async fn run<T, F, Fut>(&self, location: &str, attempt: F) -> Result<T, FetchError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        attempt
            .retry(self.backoff(self.max_attempts.saturating_sub(1)))
            .when(|f: &Failure| f.error.is_transient())
            .adjust(|f: &Failure, backoff| next_delay(f.retry_after, backoff))
            .notify(
                |f: &Failure, delay| warn!(%location, error = %f.error, "retrying in {delay:?}"),
            )
            .await
            .map_err(|f| f.error)
    }
}

/// The wait before the next attempt: the backoff's, or the server's
/// `Retry-After` when longer. `None` gives up: attempts are exhausted
/// (`backoff` is `None`), or the server asked for more than
/// [`MAX_RETRY_AFTER`].
fn next_delay(retry_after: Option<Duration>, backoff: Option<Duration>) -> Option<Duration> {
    let backoff = backoff?;
    match retry_after {
        Some(wait) if wait > MAX_RETRY_AFTER => None,
        Some(wait) => Some(wait.max(backoff)),
        None => Some(backoff),
    }
}

/// `Retry-After` in its delay-seconds form. The HTTP-date form is not
/// parsed: the backoff's delay applies then.
fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("0"), Some(Duration::ZERO));
        for unusable in ["", "-1", "1.5", "soon", "Wed, 21 Oct 2015 07:28:00 GMT"] {
            assert_eq!(parse_retry_after(unusable), None, "{unusable:?}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn retry_after_stretches_the_backoff_within_limits() {
        let s = Duration::from_secs;
        assert_eq!(next_delay(None, Some(s(1))), Some(s(1)));
        assert_eq!(next_delay(Some(s(5)), Some(s(1))), Some(s(5)));
        assert_eq!(next_delay(Some(s(0)), Some(s(1))), Some(s(1)));
        assert_eq!(next_delay(Some(s(5)), None), None, "attempts exhausted");
        assert_eq!(
            next_delay(Some(s(3600)), Some(s(1))),
            None,
            "too long to hold a worker"
        );
    }
}
