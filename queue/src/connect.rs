//! Connecting to RabbitMQ. A broker that is down or restarting is a
//! transient condition: retry with backoff (backon) rather than exit.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use lapin::{Connection, ConnectionProperties};

/// The broker a fleet uses when none is configured: a local RabbitMQ's
/// default vhost with its default account.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Connects to `url`, retrying for up to `patience` with exponential
/// backoff. The error names the URL without its password.
pub async fn connect(url: &str, patience: Duration) -> Result<Connection, lapin::Error> {
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_total_delay(Some(patience))
        .with_max_times(usize::MAX)
        .with_jitter();
    (|| Connection::connect(url, ConnectionProperties::default()))
        .retry(backoff)
        .notify(|e, after| {
            tracing::warn!(broker = %redact(url), "connecting to RabbitMQ failed ({e}); retrying in {after:?}")
        })
        .await
}

/// `amqp://user:secret@host/vhost` → `amqp://user:***@host/vhost`.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redact_hides_the_password_only() {
        assert_eq!(
            super::redact("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(super::redact("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }
}
