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

use exploder_queue::connect::{connect, redact};
use exploder_queue::publish::{PublishError, Publisher};
use exploder_queue::topology::Topology;
use lapin::Connection;
use tokio::sync::Mutex;

/// How long one event waits for the broker before giving up.
const CONNECT_PATIENCE: Duration = Duration::from_secs(3);

pub struct Broker {
    url: String,
    prefix: String,
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
    pub fn new(url: &str, prefix: &str) -> Broker {
        Broker {
            url: url.to_string(),
            prefix: prefix.to_string(),
            open: Mutex::new(None),
        }
    }

    /// The current publisher, connecting first if there is none.
    pub async fn get(&self) -> Result<Arc<Open>, BrokerError> {
        let mut open = self.open.lock().await;
        if let Some(o) = open.as_ref().filter(|o| o.conn.status().connected()) {
            return Ok(o.clone());
        }
        let conn = connect(&self.url, CONNECT_PATIENCE)
            .await
            .map_err(|source| BrokerError::Connect {
                url: redact(&self.url),
                source,
            })?;
        let publisher = Publisher::open(&conn, Topology::new(&self.prefix)).await?;
        let o = Arc::new(Open { conn, publisher });
        *open = Some(o.clone());
        tracing::info!(broker = %redact(&self.url), "connected to RabbitMQ");
        Ok(o)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Forgets the publisher after a failed publish: the next event
    /// reconnects.
    pub async fn reset(&self) {
        *self.open.lock().await = None;
    }
}
