//! Publishing jobs: persistent, `mandatory`, with publisher confirms. A
//! job counts as published only when the broker confirmed it; a nack or an
//! unroutable return is an error the caller sees, never silence, and so is
//! a confirm that does not come within the publisher's deadline (a broker
//! behind a partition, or one blocking publishers on a memory or disk
//! alarm while its heartbeats go on).
//!
//! A confirm is a round trip to the broker's disk: waiting for each before
//! sending the next caps a publisher at one job per round trip. So jobs
//! can be pipelined: [`Publisher::send`] several, then await each
//! [`Sent::confirmed`] ([`confirm_all`]). The deadline holds per job, from
//! its send, whichever way it was published.

use std::time::Duration;

use exploder_common::job::{self, Job};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, PublisherConfirm};

use crate::connect::{DEFAULT_TIMEOUT, within};
use crate::topology::Topology;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(
        "the exchange {exchange} does not exist (run `exploder topology apply` with the same \
         EXPLODER_PREFIX)"
    )]
    NoTopology { exchange: String },
    #[error("opening a publishing channel: {0}")]
    Channel(#[source] lapin::Error),
    #[error("the broker did not confirm job {id}: {reason}")]
    Nacked { id: String, reason: String },
    #[error(
        "job {id} could not be routed to {queue}: the queue does not exist \
         (run `exploder topology apply` with the same EXPLODER_PREFIX)"
    )]
    Unroutable { id: String, queue: String },
    #[error(
        "the broker did not confirm job {id} within {within:?}: it is unreachable, or it \
         blocks publishers (a memory or disk alarm: see `rabbitmqctl status`)"
    )]
    Unconfirmed { id: String, within: Duration },
    #[error("publishing job {id}: {source}")]
    Broker {
        id: String,
        #[source]
        source: lapin::Error,
    },
}

/// A channel in confirm mode for one fleet's topology.
pub struct Publisher {
    channel: Channel,
    topology: Topology,
    /// How long a publish waits for its confirm.
    timeout: Duration,
}

impl Publisher {
    /// Opens a confirm-mode channel, after checking (on a throwaway
    /// channel: a failed check closes it) that the work exchange exists.
    /// Every wait on the broker, here and in each publish, is cut at the
    /// default deadline ([`DEFAULT_TIMEOUT`]).
    pub async fn open(conn: &Connection, topology: Topology) -> Result<Publisher, PublishError> {
        Self::open_with(conn, topology, DEFAULT_TIMEOUT).await
    }

    /// [`Publisher::open`] with waits on the broker cut at `timeout`.
    pub async fn open_with(
        conn: &Connection,
        topology: Topology,
        timeout: Duration,
    ) -> Result<Publisher, PublishError> {
        let exchange = topology.work_exchange();
        let probe = within(timeout, "opening a channel", conn.create_channel())
            .await
            .map_err(PublishError::Channel)?;
        let exists = within(
            timeout,
            "a passive declare of the work exchange",
            probe.exchange_declare(
                ShortString::from(exchange.as_str()),
                lapin::ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await;
        match exists {
            Ok(()) => {}
            // Not an answer about the exchange: the broker is not there.
            Err(e) if !conn.status().connected() || is_timeout(&e) => {
                return Err(PublishError::Channel(e));
            }
            Err(_) => return Err(PublishError::NoTopology { exchange }),
        }
        let _ = within(
            timeout,
            "closing a channel",
            probe.close(200, "probe done".into()),
        )
        .await;
        let channel = within(timeout, "opening a channel", conn.create_channel())
            .await
            .map_err(PublishError::Channel)?;
        within(
            timeout,
            "confirm mode",
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await
        .map_err(PublishError::Channel)?;
        Ok(Publisher {
            channel,
            topology,
            timeout,
        })
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Publishes one job to the work exchange and waits for the broker's
    /// confirm.
    pub async fn publish(&self, job: &Job) -> Result<(), PublishError> {
        self.send(job).await?.confirmed().await
    }

    /// Sends one job to the work exchange without waiting for its confirm:
    /// the caller sends several, then awaits each [`Sent::confirmed`], so
    /// their confirms come back in one round trip instead of one each.
    pub async fn send(&self, job: &Job) -> Result<Sent, PublishError> {
        let kind = job.kind();
        self.send_raw(
            &self.topology.work_exchange(),
            kind.as_str(),
            &job::encode(job),
            job.id(),
            FieldTable::default(),
        )
        .await
    }

    /// Publishes an encoded job with extra headers (retry bookkeeping, a
    /// dead-letter reason) to `exchange`/`routing_key` ("" and a queue name
    /// for a queue), persistent, mandatory, confirmed.
    pub async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        id: &str,
        headers: FieldTable,
    ) -> Result<(), PublishError> {
        self.send_raw(exchange, routing_key, body, id, headers)
            .await?
            .confirmed()
            .await
    }

    /// [`Publisher::publish_raw`] without waiting for the confirm. The
    /// publisher's deadline starts now: the send and its confirm together
    /// must be done within it, however many sends are pipelined behind.
    pub async fn send_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        id: &str,
        mut headers: FieldTable,
    ) -> Result<Sent, PublishError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        headers.insert(
            job::SCHEMA_HEADER.into(),
            AMQPValue::ShortUInt(job::SCHEMA_VERSION),
        );
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from(job::CONTENT_TYPE))
            .with_message_id(ShortString::from(id))
            .with_headers(headers);
        let sent = tokio::time::timeout_at(
            deadline,
            self.channel.basic_publish(
                ShortString::from(exchange),
                ShortString::from(routing_key),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                properties,
            ),
        )
        .await;
        let destination = if exchange.is_empty() {
            routing_key.to_string()
        } else {
            format!("{exchange}/{routing_key}")
        };
        let confirm = match sent {
            Ok(Ok(confirm)) => confirm,
            Ok(Err(source)) => {
                return Err(PublishError::Broker {
                    id: id.to_string(),
                    source,
                });
            }
            Err(_) => {
                return Err(PublishError::Unconfirmed {
                    id: id.to_string(),
                    within: self.timeout,
                });
            }
        };
        Ok(Sent {
            id: id.to_string(),
            destination,
            confirm,
            deadline,
            within: self.timeout,
        })
    }
}

/// A job handed to the broker whose confirm has not been awaited yet. It
/// counts as published only once [`Sent::confirmed`] says so; dropped
/// unawaited, it is as good as lost to the caller (the broker may still
/// have it: duplicates are harmless, a lost job is not).
#[must_use = "a job counts as published only once its confirm is awaited"]
pub struct Sent {
    id: String,
    /// exchange/routing key, or the queue: for an unroutable job's error.
    destination: String,
    confirm: PublisherConfirm,
    /// When the publisher's deadline, counted from the send, runs out.
    deadline: tokio::time::Instant,
    within: Duration,
}

impl Sent {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Waits for the broker's confirm until the deadline the send started;
    /// a nack, an unroutable return or no confirm by then is an error.
    pub async fn confirmed(self) -> Result<(), PublishError> {
        let confirm = match tokio::time::timeout_at(self.deadline, self.confirm).await {
            Ok(confirm) => confirm.map_err(|source| PublishError::Broker {
                id: self.id.clone(),
                source,
            })?,
            Err(_) => {
                return Err(PublishError::Unconfirmed {
                    id: self.id,
                    within: self.within,
                });
            }
        };
        let acked = confirm.is_ack();
        if confirm.take_message().is_some() {
            return Err(PublishError::Unroutable {
                id: self.id,
                queue: self.destination,
            });
        }
        if !acked {
            return Err(PublishError::Nacked {
                id: self.id,
                reason: "nack (the broker could not store it)".into(),
            });
        }
        Ok(())
    }
}

/// Awaits the confirms of pipelined sends, in the order sent; the first
/// failure is the answer (the rest are dropped: the caller republishes
/// them all anyway, and every handler is idempotent). The deadlines run
/// side by side, each from its own send, so waiting in order adds none.
pub async fn confirm_all(sent: impl IntoIterator<Item = Sent>) -> Result<(), PublishError> {
    for s in sent {
        s.confirmed().await?;
    }
    Ok(())
}

/// Whether a broker error is a deadline that passed ([`within`]).
fn is_timeout(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::IOError(io) if io.kind() == std::io::ErrorKind::TimedOut)
}
