//! Connecting to RabbitMQ. A broker that is down or restarting is a
//! transient condition: retry with backoff (backon) rather than exit.
//!
//! Every wait on the broker has a deadline ([`AmqpOptions`]). A broker
//! behind a partition answers nothing, not even a reset: without one, a
//! TCP connect waits out the kernel's SYN retries (about 2 minutes; lapin
//! applies no connect timeout on its async path), a handshake or a
//! publisher confirm waits until the heartbeat gives the connection up,
//! and RabbitMQ's own heartbeat (60 s, two missed = dead) keeps a lost
//! worker's jobs unacked for two minutes. So:
//!
//! - the heartbeat is asked for explicitly (`?heartbeat=` in the URL wins):
//!   both sides give a silent connection up after two heartbeats;
//! - each connection attempt (TCP, TLS, the AMQP handshake) is cut at the
//!   timeout, and an attempt cut mid-handshake has its socket shut down, so
//!   lapin's I/O thread behind it ends instead of waiting on a peer that
//!   never answers;
//! - round trips after that ([`within`]) and publisher confirms
//!   (`publish`) are cut at the same timeout.

use std::future::Future;
use std::net::{Shutdown, TcpStream as StdTcpStream};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use lapin::tcp::{AsyncTcpStream, OwnedTLSConfig};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties};

/// The broker a fleet uses when none is configured: a local RabbitMQ's
/// default vhost with its default account.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The deadlines of a process's waits on the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AmqpOptions {
    /// The heartbeat asked of the broker (whole seconds; zero leaves it to
    /// the broker, RabbitMQ's 60 s). Either side gives a connection up
    /// after two heartbeats without a frame from the other, so a partition
    /// is noticed, and a lost worker's jobs requeued, within about twice
    /// this. A heartbeat in the URL (`?heartbeat=N`) wins.
    pub heartbeat: Duration,
    /// The deadline of each wait on the broker: a connection attempt (TCP,
    /// TLS and the AMQP handshake), a round trip (a channel, a declare, a
    /// consume), a publish waiting for its confirm.
    pub timeout: Duration,
}

/// The heartbeat when none is configured: two missed (20 s) and the
/// connection is given up, on both sides.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
/// The deadline of a wait on the broker when none is configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for AmqpOptions {
    fn default() -> Self {
        AmqpOptions {
            heartbeat: DEFAULT_HEARTBEAT,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// Connects to `url`, retrying for up to `patience` with exponential
/// backoff, with the default deadlines. The error names the URL without
/// its password.
pub async fn connect(url: &str, patience: Duration) -> Result<Connection, lapin::Error> {
    connect_with(url, patience, &AmqpOptions::default()).await
}

/// Connects to `url`: attempts, each cut at `options.timeout`, with
/// exponential backoff between them, until one succeeds or `patience` has
/// passed (the attempt running then is cut too).
pub async fn connect_with(
    url: &str,
    patience: Duration,
    options: &AmqpOptions,
) -> Result<Connection, lapin::Error> {
    let uri = with_heartbeat(url.parse::<AMQPUri>().map_err(io_other)?, options.heartbeat);
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_total_delay(Some(patience))
        .with_max_times(usize::MAX)
        .with_jitter();
    let attempts = (|| attempt(uri.clone(), options.timeout.min(patience.max(MIN_ATTEMPT))))
        .retry(backoff)
        // The broker answered, and its answer does not change with time.
        .when(|e| !is_login_refused(e))
        .notify(|e, after| {
            tracing::warn!(broker = %redact(url), "connecting to RabbitMQ failed ({e}); retrying in {after:?}")
        });
    match tokio::time::timeout(patience.max(MIN_ATTEMPT), attempts).await {
        Ok(result) => result,
        Err(_) => Err(io_timeout(format!(
            "no connection to RabbitMQ within {:?}",
            patience.max(MIN_ATTEMPT)
        ))),
    }
}

/// Whether the broker refused the login (ACCESS_REFUSED, 403: a wrong user
/// or password, or a user without access to the vhost): permanent, never
/// worth a retry.
pub fn is_login_refused(e: &lapin::Error) -> bool {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => {
            amqp.get_id() == lapin::protocol::AMQPSoftError::ACCESSREFUSED.get_id()
        }
        // Some lapin paths report the broker's close as text only.
        _ => {
            let text = e.to_string();
            text.contains("ACCESS_REFUSED") || text.contains("ACCESS-REFUSED")
        }
    }
}

/// No attempt is cut shorter than this, whatever the patience.
const MIN_ATTEMPT: Duration = Duration::from_secs(1);

/// The URI with `heartbeat` asked for, unless it asks for one itself.
fn with_heartbeat(mut uri: AMQPUri, heartbeat: Duration) -> AMQPUri {
    if uri.query.heartbeat.is_none() && !heartbeat.is_zero() {
        let secs = heartbeat.as_secs().clamp(1, u64::from(u16::MAX));
        uri.query.heartbeat = Some(secs as u16);
    }
    uri
}

/// One connection attempt, cut at `timeout`. lapin runs the connection on
/// an I/O thread of its own, which an abandoned attempt would leave
/// waiting on the socket (a broker that accepted the connection and went
/// silent never answers the handshake): the socket of an attempt that
/// does not complete is shut down, which ends that thread.
async fn attempt(uri: AMQPUri, timeout: Duration) -> Result<Connection, lapin::Error> {
    let socket = AbandonedSocket::default();
    let runtime = lapin::runtime::default_runtime()?;
    let kept = socket.0.clone();
    let connecting = Connection::connector(
        uri,
        runtime,
        async move |uri: AMQPUri, runtime| {
            let host = uri.authority.host.clone();
            let port = uri.authority.port;
            let tcp = tokio::time::timeout(timeout, async {
                let addrs: Vec<std::net::SocketAddr> =
                    tokio::net::lookup_host((host.as_str(), port))
                        .await?
                        .collect();
                AsyncTcpStream::connect(&runtime, addrs).await
            })
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("TCP connection to {host}:{port} not made within {timeout:?}"),
                )
            })??;
            if let AsyncTcpStream::Plain(s) = &tcp {
                let dup = s.get_ref().as_fd().try_clone_to_owned()?;
                *kept.lock().expect("socket slot") = Some(StdTcpStream::from(dup));
            }
            match uri.scheme {
                AMQPScheme::AMQP => Ok(tcp),
                AMQPScheme::AMQPS => {
                    let config = OwnedTLSConfig::default();
                    Ok(tcp.into_tls(&host, config.as_ref()).await?)
                }
            }
        },
        ConnectionProperties::default(),
    );
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(conn)) => {
            socket.keep();
            Ok(conn)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io_timeout(format!(
            "RabbitMQ did not complete the connection within {timeout:?}"
        ))),
    }
}

/// A duplicate of an attempt's socket, shut down when the attempt is
/// dropped without a connection (failed, cut at its deadline, or its
/// caller gave up), unless [`AbandonedSocket::keep`] says it connected.
#[derive(Default)]
struct AbandonedSocket(Arc<Mutex<Option<StdTcpStream>>>);

impl AbandonedSocket {
    /// The connection owns its socket now: forget the duplicate.
    fn keep(&self) {
        self.0.lock().expect("socket slot").take();
    }
}

impl Drop for AbandonedSocket {
    fn drop(&mut self) {
        if let Some(s) = self.0.lock().expect("socket slot").take() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// Runs one wait on the broker (a round trip: a channel, a declare, a
/// consume) with a deadline: past `timeout`, an error naming `what`.
pub async fn within<T>(
    timeout: Duration,
    what: &str,
    wait: impl Future<Output = Result<T, lapin::Error>>,
) -> Result<T, lapin::Error> {
    match tokio::time::timeout(timeout, wait).await {
        Ok(result) => result,
        Err(_) => Err(io_timeout(format!(
            "RabbitMQ did not answer {what} within {timeout:?}"
        ))),
    }
}

fn io_timeout(message: String) -> lapin::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, message).into()
}

fn io_other(e: impl std::fmt::Display) -> lapin::Error {
    std::io::Error::other(e.to_string()).into()
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
    use super::*;

    #[test]
    fn redact_hides_the_password_only() {
        assert_eq!(
            redact("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }

    #[test]
    fn the_heartbeat_is_asked_for_unless_the_url_asks_its_own() {
        let uri = |s: &str| s.parse::<AMQPUri>().unwrap();
        let ten = Duration::from_secs(10);
        assert_eq!(
            with_heartbeat(uri("amqp://h/%2f"), ten).query.heartbeat,
            Some(10)
        );
        assert_eq!(
            with_heartbeat(uri("amqp://h/%2f?heartbeat=3"), ten)
                .query
                .heartbeat,
            Some(3)
        );
        assert_eq!(
            with_heartbeat(uri("amqp://h/%2f"), Duration::ZERO)
                .query
                .heartbeat,
            None,
            "zero leaves it to the broker"
        );
    }
}
