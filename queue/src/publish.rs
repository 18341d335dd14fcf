//! Publishing jobs: persistent, `mandatory`, with publisher confirms. A
//! job counts as published only when the broker confirmed it; a nack or an
//! unroutable return is an error the caller sees, never silence, and so is
//! a confirm that does not come within the publisher's deadline (a broker
//! behind a partition, or one blocking publishers on a memory or disk
//! alarm while its heartbeats go on).

use std::time::Duration;

use exploder_common::job::{self, Job};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};

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
        let kind = job.kind();
        self.publish_raw(
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
        mut headers: FieldTable,
    ) -> Result<(), PublishError> {
        let broker = |source| PublishError::Broker {
            id: id.to_string(),
            source,
        };
        headers.insert(
            job::SCHEMA_HEADER.into(),
            AMQPValue::ShortUInt(job::SCHEMA_VERSION),
        );
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from(job::CONTENT_TYPE))
            .with_message_id(ShortString::from(id))
            .with_headers(headers);
        let confirmed = tokio::time::timeout(self.timeout, async {
            self.channel
                .basic_publish(
                    ShortString::from(exchange),
                    ShortString::from(routing_key),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    body,
                    properties,
                )
                .await?
                .await
        })
        .await;
        let confirm = match confirmed {
            Ok(confirm) => confirm.map_err(broker)?,
            Err(_) => {
                return Err(PublishError::Unconfirmed {
                    id: id.to_string(),
                    within: self.timeout,
                });
            }
        };
        let acked = confirm.is_ack();
        if confirm.take_message().is_some() {
            return Err(PublishError::Unroutable {
                id: id.to_string(),
                queue: if exchange.is_empty() {
                    routing_key.to_string()
                } else {
                    format!("{exchange}/{routing_key}")
                },
            });
        }
        if !acked {
            return Err(PublishError::Nacked {
                id: id.to_string(),
                reason: "nack (the broker could not store it)".into(),
            });
        }
        Ok(())
    }
}

/// Whether a broker error is a deadline that passed ([`within`]).
fn is_timeout(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::IOError(io) if io.kind() == std::io::ErrorKind::TimedOut)
}
