//! The producer's link to the fleet's broker: a confirm-mode publisher,
//! (re)connected on demand.
//!
//! A producer is long-lived and the broker may restart under it. Rather
//! than a background supervisor, every publish asks for the publisher; a
//! publish that fails drops it, and the next event connects again. An event
//! that arrives while the broker is down fails fast (a webhook event that
//! cannot be recorded is answered 503, so the sender retries; a reconcile
//! that cannot publish is retried by the scheduler).

use std::sync::Arc;
use std::time::Duration;

use exploder_queue::connect::{AmqpOptions, connect_with, redact, within};
use exploder_queue::publish::{PublishError, Publisher};
use exploder_queue::topology::Topology;
use lapin::Connection;
use tokio::sync::Mutex;

/// How long one event waits for the broker before giving up.
const CONNECT_PATIENCE: Duration = Duration::from_secs(3);

pub struct Broker {
    url: String,
    prefix: String,
    options: AmqpOptions,
    open: Mutex<Option<Arc<Open>>>,
}

/// A connection and the publisher on it (the connection must outlive it).
pub struct Open {
    pub conn: Connection,
    pub publisher: Publisher,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot reach RabbitMQ at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: lapin::Error,
    },
    #[error(transparent)]
    Publisher(#[from] PublishError),
}

impl Broker {
    pub fn new(url: &str, prefix: &str, options: AmqpOptions) -> Broker {
        Broker {
            url: url.to_string(),
            prefix: prefix.to_string(),
            options,
            open: Mutex::new(None),
        }
    }

    /// The deadlines of every wait on the broker.
    pub fn options(&self) -> &AmqpOptions {
        &self.options
    }

    /// The current publisher, connecting first if there is none.
    pub async fn get(&self) -> Result<Arc<Open>, BrokerError> {
        let mut open = self.open.lock().await;
        if let Some(o) = open.as_ref().filter(|o| o.conn.status().connected()) {
            return Ok(o.clone());
        }
        let conn = connect_with(&self.url, CONNECT_PATIENCE, &self.options)
            .await
            .map_err(|source| BrokerError::Connect {
                url: redact(&self.url),
                source,
            })?;
        let publisher =
            match Publisher::open_with(&conn, Topology::new(&self.prefix), self.options.timeout)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    let deadline = self.options.timeout;
                    tokio::spawn(async move {
                        let _ = within(deadline, "closing", conn.close(200, "failed".into())).await;
                    });
                    return Err(e.into());
                }
            };
        let o = Arc::new(Open { conn, publisher });
        *open = Some(o.clone());
        tracing::info!(broker = %redact(&self.url), "connected to RabbitMQ");
        Ok(o)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Forgets the publisher after a failed publish: the next event
    /// reconnects. The old connection is closed (lapin keeps a dropped
    /// connection open).
    pub async fn reset(&self) {
        let old = self.open.lock().await.take();
        if let Some(old) = old {
            let deadline = self.options.timeout;
            tokio::spawn(async move {
                let closing = old.conn.close(200, "reconnecting".into());
                let _ = within(deadline, "closing", closing).await;
            });
        }
    }

    /// Whether the broker answers a round trip (a channel opened and
    /// closed), connecting first if need be, all within `deadline`; a
    /// connection that does not answer is dropped, so that the next event
    /// connects afresh instead of waiting on it. For `/readyz`.
    pub async fn probe(&self, deadline: Duration) -> Result<(), String> {
        let connected = std::sync::atomic::AtomicBool::new(false);
        let round_trip = async {
            let open = self.get().await.map_err(|e| e.to_string())?;
            connected.store(true, std::sync::atomic::Ordering::Relaxed);
            let answered = async {
                let channel = open.conn.create_channel().await?;
                channel.close(200, "probe".into()).await
            };
            answered
                .await
                .map_err(|e| format!("RabbitMQ at {}: {e}", redact(&self.url)))
        };
        match tokio::time::timeout(deadline, round_trip).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                // Connected, and no answer: that connection is no good.
                if connected.load(std::sync::atomic::Ordering::Relaxed) {
                    self.reset().await;
                }
                Err(format!(
                    "RabbitMQ at {} did not answer within {deadline:?}",
                    redact(&self.url)
                ))
            }
        }
    }
}
